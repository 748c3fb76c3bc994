//! Free TCP ports on 127.0.0.1.
//!
//! [`free_port`] binds `127.0.0.1:0`, reads the port the kernel chose and closes the socket.
//! Another process may grab the port between that close and the server's own `bind`; the
//! servers in this crate detect that case ([`log_says_addr_in_use`]) and start again on a new
//! port.

use std::net::{Ipv4Addr, TcpListener};

/// The loopback address every test server listens on.
pub const LOOPBACK: &str = "127.0.0.1";

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether a server's log says it could not bind its port because something else holds it.
pub fn log_says_addr_in_use(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("address in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn recognises_bind_failures_of_sshd_and_rust_servers() {
        assert!(log_says_addr_in_use(
            "Bind to port 4022 on 127.0.0.1 failed: Address already in use.\nCannot bind any address."
        ));
        assert!(log_says_addr_in_use("Error: Address in use (os error 98)"));
        assert!(!log_says_addr_in_use(
            "Server listening on 127.0.0.1 port 4022."
        ));
    }
}
