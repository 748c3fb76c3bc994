//! Remote commands over SSH exec, given as argv.
//!
//! SSH exec carries one string that the remote user's shell parses, so each argv token is
//! quoted for a POSIX shell ([`quote`]): tokens made only of safe characters go as they are,
//! everything else inside single quotes (a `'` becomes `'\''`). The result is never built by
//! pasting strings into a command line.
//!
//! [`SshSession::exec`] collects stdout (bounded), the last lines of stderr and the exit status;
//! a non-zero status is a [`TransportError::Exec`] carrying argv, status and the stderr tail.

use russh::ChannelMsg;

use crate::transport::ssh::ssh_error;
use crate::transport::{SshSession, TransportError};

/// Most stdout kept from a command.
pub const MAX_STDOUT: usize = 1 << 20;
/// Bytes of stderr kept (the tail).
pub const STDERR_TAIL: usize = 4096;

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Exit status.
    pub status: u32,
    /// Standard output (first [`MAX_STDOUT`] bytes).
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of standard error.
    pub stderr_tail: String,
}

/// Quote one token for a POSIX shell.
pub fn quote(token: &str) -> String {
    let safe = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        token.to_owned()
    } else {
        format!("'{}'", token.replace('\'', r"'\''"))
    }
}

/// Quote every token and join them with spaces.
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter().map(|t| quote(t)).collect::<Vec<_>>().join(" ")
}

impl SshSession {
    /// Run `argv` on the remote host; a non-zero exit status is an error.
    pub async fn exec(&self, argv: &[String]) -> Result<ExecOutput, TransportError> {
        let out = self.exec_status(argv).await?;
        if out.status == 0 {
            Ok(out)
        } else {
            Err(TransportError::Exec {
                host: self.host().to_owned(),
                argv: argv.to_vec(),
                status: Some(out.status),
                stderr_tail: out.stderr_tail,
            })
        }
    }

    /// Run `argv` on the remote host and return its output whatever the exit status.
    pub async fn exec_status(&self, argv: &[String]) -> Result<ExecOutput, TransportError> {
        let host = self.host();
        if argv.is_empty() {
            return Err(TransportError::Exec {
                host: host.to_owned(),
                argv: Vec::new(),
                status: None,
                stderr_tail: "empty argv".into(),
            });
        }
        let mut channel = self
            .handle()
            .channel_open_session()
            .await
            .map_err(|e| ssh_error(host, "opening an exec channel", e))?;
        channel
            .exec(true, quote_argv(argv))
            .await
            .map_err(|e| ssh_error(host, "starting a command", e))?;
        let mut stdout = Vec::new();
        let mut stderr: Vec<u8> = Vec::new();
        let mut status = None;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    let room = MAX_STDOUT.saturating_sub(stdout.len());
                    stdout.extend_from_slice(&data[..data.len().min(room)]);
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    stderr.extend_from_slice(&data);
                    if stderr.len() > 2 * STDERR_TAIL {
                        stderr.drain(..stderr.len() - STDERR_TAIL);
                    }
                }
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                // The server refused the exec request; it need not close the channel.
                ChannelMsg::Failure if status.is_none() => {
                    return Err(TransportError::Exec {
                        host: host.to_owned(),
                        argv: argv.to_vec(),
                        status: None,
                        stderr_tail: "the server refused to run the command".into(),
                    });
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    stderr.extend_from_slice(
                        format!("\nkilled by signal {signal_name:?}").as_bytes(),
                    );
                }
                _ => {}
            }
        }
        let tail_start = stderr.len().saturating_sub(STDERR_TAIL);
        let stderr_tail = String::from_utf8_lossy(&stderr[tail_start..])
            .trim()
            .to_owned();
        match status {
            Some(status) => Ok(ExecOutput {
                status,
                stdout,
                stderr_tail,
            }),
            None => Err(TransportError::Exec {
                host: host.to_owned(),
                argv: argv.to_vec(),
                status: None,
                stderr_tail: if stderr_tail.is_empty() {
                    "channel closed without an exit status".into()
                } else {
                    stderr_tail
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_real_shell() {
        let tokens = [
            "plain",
            "with space",
            "it's",
            "$HOME",
            "`id`",
            "a;b|c&d",
            "",
            "ünïcode ✓",
            "new\nline",
            "-- --",
        ];
        let argv: Vec<String> = tokens.iter().map(|s| s.to_string()).collect();
        // printf '%s\0' TOKENS, parsed by /bin/sh exactly as a remote shell would.
        let script = format!("printf '%s\\0' {}", quote_argv(&argv));
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success());
        let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(got[i], t.as_bytes(), "token {i}: {script}");
        }
    }

    #[test]
    fn safe_tokens_stay_bare() {
        assert_eq!(quote("sha256sum"), "sha256sum");
        assert_eq!(quote("/data/run_1/a.evio"), "/data/run_1/a.evio");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
