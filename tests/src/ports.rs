//! Free TCP ports on 127.0.0.1.
//!
//! [`free_port`] picks a random port *below* the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`) and checks that it can be bound. Ports from
//! `bind(127.0.0.1:0)` come from the ephemeral range, where the kernel soon hands a port that
//! a stopped server just released to someone else (another test's `bind(0)`, or the local end
//! of an outgoing connection), which would make `restart` on the same port fail. Outside that
//! range only an explicit bind can take it. When the range leaves no room below it,
//! `bind(0)` is the fallback.
//!
//! Another process may still grab the port between the check and the server's own `bind`;
//! the servers in this crate detect that case ([`log_says_addr_in_use`]) and start again on a
//! new port.

use std::net::{Ipv4Addr, TcpListener};

/// The loopback address every test server listens on.
pub const LOOPBACK: &str = "127.0.0.1";

/// Lowest port [`free_port`] picks (above the well-known and most registered service ports
/// that tests might meet, e.g. 5432, 8080).
const PICK_FLOOR: u16 = 20_000;
/// How many random ports to try before falling back to `bind(0)`.
const PICK_ATTEMPTS: usize = 64;

/// A TCP port on 127.0.0.1 that was free a moment ago, outside the ephemeral range if possible.
pub fn free_port() -> std::io::Result<u16> {
    let (ephemeral_low, _) = ephemeral_range().unwrap_or((32_768, 60_999));
    if ephemeral_low > PICK_FLOOR {
        for _ in 0..PICK_ATTEMPTS {
            let port = rand::random_range(PICK_FLOOR..ephemeral_low);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The kernel's ephemeral port range, `(low, high)`.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    match (fields.next(), fields.next()) {
        (Some(Ok(low)), Some(Ok(high))) => Some((low, high)),
        _ => None,
    }
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
    fn free_port_is_bindable_and_not_ephemeral() {
        let (low, high) = ephemeral_range().unwrap();
        // Other tests of this binary start servers on free ports at the same time, so one of
        // them may take a port between `free_port`'s check and this bind (the race the module
        // docs describe; it failed the suite once): a few tries, every port in range.
        let mut bound = false;
        for _ in 0..5 {
            let port = free_port().unwrap();
            assert_ne!(port, 0);
            if low > PICK_FLOOR {
                assert!(
                    (PICK_FLOOR..low).contains(&port),
                    "{port} in ephemeral range {low}-{high}"
                );
            }
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                bound = true;
                break;
            }
        }
        assert!(
            bound,
            "five free ports in a row were taken before they could be bound"
        );
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
