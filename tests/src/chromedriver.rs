//! Debian's `chromedriver` on 127.0.0.1 for one test, driving its headless `chromium`.
//!
//! [`ChromeDriver::start`] runs `chromedriver --port=PORT` (in its own process group, its
//! log in a temp dir) and waits until `GET /status` answers; [`ChromeDriver::url`] is what
//! a WebDriver client connects to, and [`ChromeDriver::capabilities`] asks for a headless
//! Chromium with no sandbox (tests run as root in CI) and a fixed window size (screenshots
//! of the same size on every machine). Drop stops chromedriver and every browser it
//! started (the process group).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`
//! (`deploy/install-test-deps.sh`).

use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use tempfile::TempDir;

use crate::binaries::find_on_path;
use crate::ports::LOOPBACK;
use crate::process::{start_on_free_port, ServerProcess, StartError};
use crate::tempdirs::server_temp_dir;

/// How long chromedriver may take to answer `/status`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running chromedriver; stopped (with its browsers) on drop.
#[derive(Debug)]
pub struct ChromeDriver {
    process: Option<ServerProcess>,
    port: u16,
    dir: TempDir,
}

fn binary(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    find_on_path(name).ok_or_else(|| {
        anyhow!(
            "{name} not found on PATH (set {env}): install Debian's chromium and \
             chromium-driver (deploy/install-test-deps.sh)"
        )
    })
}

/// Whether `GET /status` on `port` answers 200.
fn status_ok(port: u16) -> anyhow::Result<()> {
    let mut s = TcpStream::connect((LOOPBACK, port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let head = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
    if head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(anyhow!("chromedriver /status answered {head:?}"))
    }
}

impl ChromeDriver {
    /// Starts chromedriver on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<ChromeDriver> {
        let driver = binary("chromedriver", "FERRY_TEST_CHROMEDRIVER")?;
        let dir = server_temp_dir("ferry-chromedriver-")?;
        let log = dir.path().join("chromedriver.log");
        let mut process = None;
        let port = start_on_free_port("chromedriver", |port| {
            let args = [format!("--port={port}"), "--allowed-ips=127.0.0.1".into()];
            let mut p = ServerProcess::spawn("chromedriver", &driver, &args, &log)
                .map_err(StartError::Failed)?;
            p.wait_ready(START_TIMEOUT, || status_ok(port))?;
            process = Some(p);
            Ok(())
        })
        .context("starting chromedriver")?;
        Ok(ChromeDriver { process, port, dir })
    }

    /// `http://127.0.0.1:PORT`, the WebDriver endpoint.
    pub fn url(&self) -> String {
        format!("http://{LOOPBACK}:{}", self.port)
    }

    /// The capabilities of a headless Chromium: no sandbox, no GPU, a 1280×900 window, a
    /// profile in this driver's temp dir, the binary from `$FERRY_TEST_CHROMIUM` or PATH.
    pub fn capabilities(&self) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let chromium = binary("chromium", "FERRY_TEST_CHROMIUM")?;
        let profile = self.dir.path().join("profile");
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    "--hide-scrollbars", "--no-first-run",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        match caps {
            serde_json::Value::Object(m) => Ok(m),
            _ => Err(anyhow!("capabilities are not an object")),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }
}
