//! Progress for copies run by hand: bars on a terminal, plain log lines otherwise.
//!
//! [`for_agent`] picks the [`CopyProgress`] the copy tasks report to. When the agent runs
//! one cycle (`--once`) with stderr on a terminal, that is [`Bars`]: one bar for all bytes of
//! the runs being copied (rate and ETA) and one bar per file in flight (bytes, rate, ETA),
//! fed from [`transport::run::Progress`](crate::transport::run::Progress) events — the
//! transport reports each file's bytes every quarter second while it copies, and the total
//! moves with them; a finished or failed file leaves one line above the bars. Otherwise — a
//! daemon, a pipe, a log file — it is the tasks' [`LogProgress`]: one log line per file, and
//! one a minute for a file still in flight.
//!
//! Log lines and bars share stderr: the logger writes through [`Stderr`], which hides the
//! bars while a line is printed and redraws them after, so neither garbles the other.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};

use bytesize::ByteSize;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;

use crate::tasks::copy::{CopyProgress, LogProgress};
use crate::transport::run::Progress;

/// The bars on screen, if any, so that log lines can be printed around them.
static ON_SCREEN: OnceLock<MultiProgress> = OnceLock::new();

/// Bars when `once` and stderr is a terminal, log lines otherwise. The second value is the
/// same bars, for [`Bars::finish`] at the end of the cycle.
pub fn for_agent(once: bool) -> (Arc<dyn CopyProgress>, Option<Arc<Bars>>) {
    if once && std::io::stderr().is_terminal() {
        let bars = Arc::new(Bars::new(ProgressDrawTarget::stderr()));
        // Only the first set of bars in a process is shared with the logger.
        let _ = ON_SCREEN.set(bars.multi.clone());
        (bars.clone(), Some(bars))
    } else {
        (Arc::new(LogProgress::new()), None)
    }
}

/// Progress bars: a total over every run copy started, one line per file in flight.
pub struct Bars {
    multi: MultiProgress,
    total: Mutex<Option<ProgressBar>>,
    files: Mutex<HashMap<(String, String), ProgressBar>>,
}

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bars").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants; a bad one falls back to the default style.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("eta_known", eta_known)
}

/// The time left, or `-` while nothing moves (indicatif's `{eta}` says `0s` at 0 B/s).
fn eta_known(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let rate = state.per_sec();
    let _ = if rate.is_finite() && rate > 0.0 && state.pos() > 0 {
        write!(w, "{:#}", indicatif::HumanDuration(state.eta()))
    } else {
        write!(w, "-")
    };
}

const TOTAL_STYLE: &str =
    "{prefix:>8} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta_known}";
const FILE_STYLE: &str =
    "  {msg:30!} [{bar:25}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta_known}";

impl Bars {
    /// Bars drawn to `target` (stderr, or hidden in tests).
    pub fn new(target: ProgressDrawTarget) -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(target),
            total: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// The total bar, `more` bytes longer (created, with that length, on first use; drawn
    /// only from the first byte moved, [`Self::show_total`], so no empty total line stands
    /// above the first run's header).
    fn total(&self, more: u64) -> ProgressBar {
        let mut total = lock(&self.total);
        if let Some(bar) = total.as_ref() {
            bar.inc_length(more);
            return bar.clone();
        }
        let bar = ProgressBar::with_draw_target(Some(more), ProgressDrawTarget::hidden())
            .with_style(style(TOTAL_STYLE).progress_chars("=> "));
        bar.set_prefix("total");
        *total = Some(bar.clone());
        bar
    }

    /// The total bar, drawn (above the files in flight) once bytes move; `gained` more.
    fn show_total(&self, gained: u64) {
        let bar = self.total(0);
        if bar.is_hidden() && !self.multi.is_hidden() {
            let _ = self.multi.insert(0, bar.clone());
        }
        bar.inc(gained);
    }

    /// Bytes done and bytes expected so far (for tests and the final line).
    pub fn position(&self) -> (u64, u64) {
        lock(&self.total)
            .as_ref()
            .map_or((0, 0), |b| (b.position(), b.length().unwrap_or(0)))
    }

    /// Files still shown as in flight.
    pub fn in_flight(&self) -> usize {
        lock(&self.files).len()
    }

    /// Takes every bar off the screen, so that what is printed next (the cycle's report)
    /// is not followed by a bar drawn again: a line with the total moved stays instead.
    pub fn finish(&self) {
        for (_, bar) in lock(&self.files).drain() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        if let Some(bar) = lock(&self.total).take() {
            if bar.position() > 0 {
                self.println(format!(
                    "   total {} of {}",
                    ByteSize(bar.position()),
                    ByteSize(bar.length().unwrap_or(0))
                ));
            }
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        let _ = self.multi.clear();
    }

    fn println(&self, line: String) {
        // Printing fails only when stderr is gone; nothing to do then.
        let _ = self.multi.println(line);
    }
}

impl CopyProgress for Bars {
    fn run_started(&self, label: &str, files: usize, bytes: u64) {
        self.total(bytes);
        self.println(format!(
            "copying {label}: {files} files, {}",
            ByteSize(bytes)
        ));
    }

    fn file(&self, label: &str, event: &Progress<'_>) {
        let key = |path: &str| (label.to_owned(), path.to_owned());
        match event {
            Progress::Started { path, size } => {
                let bar = self.multi.add(ProgressBar::new(*size));
                bar.set_style(style(FILE_STYLE).progress_chars("=> "));
                bar.set_message(path.to_string());
                // No steady tick: indicatif draws a ticking bar only on its ticks, so its
                // bytes lagged the total's (drawn at once) by up to a tick. The transport
                // reports every file in flight four times a second, moving or not, and
                // each report draws the file's bar and the total together.
                lock(&self.files).insert(key(path), bar);
            }
            Progress::Bytes { path, done, .. } => {
                // The total moves with the files in flight: by what this file gained.
                let gained = lock(&self.files).get(&key(path)).map(|bar| {
                    let before = bar.position();
                    bar.set_position(*done);
                    done.saturating_sub(before)
                });
                if let Some(gained) = gained.filter(|g| *g > 0) {
                    self.show_total(gained);
                }
            }
            Progress::Finished { path, report } => {
                // What the total already counted of this file while it was in flight.
                let counted = lock(&self.files).remove(&key(path)).map_or(0, |bar| {
                    let counted = bar.position();
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                    counted
                });
                self.show_total(report.digest.size.saturating_sub(counted));
                let secs = report.elapsed.as_secs_f64().max(1e-3);
                self.println(format!(
                    "  ok    {path} ({}, {}/s)",
                    ByteSize(report.digest.size),
                    ByteSize((report.bytes as f64 / secs) as u64)
                ));
            }
            Progress::Failed { path, error } => {
                let (size, counted) = lock(&self.files).remove(&key(path)).map_or((0, 0), |bar| {
                    let seen = (bar.length().unwrap_or(0), bar.position());
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                    seen
                });
                let total = self.total(0);
                total.set_position(total.position().saturating_sub(counted));
                let left = total.length().unwrap_or(0);
                total.set_length(left.saturating_sub(size));
                self.println(format!("  FAIL  {path}: {error}"));
            }
        }
    }

    fn run_finished(&self, label: &str, ok: bool) {
        let verdict = if ok { "transferred" } else { "FAILED" };
        self.println(format!("{verdict} {label}"));
    }
}

/// The logger's stderr: one buffer per log line, written in one piece with the bars
/// hidden (when there are bars).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

/// One log line on its way to stderr.
#[derive(Debug)]
pub struct StderrLine(Vec<u8>);

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> StderrLine {
        StderrLine(Vec::with_capacity(256))
    }
}

impl Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for StderrLine {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        // A log line that cannot be written to stderr has nowhere else to go.
        let write = || {
            let _ = std::io::stderr().write_all(&line);
        };
        match ON_SCREEN.get() {
            Some(multi) => multi.suspend(write),
            None => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::FileDigest;
    use crate::transport::{CopyReport, TransportError};
    use std::time::Duration;

    fn report(size: u64) -> CopyReport {
        let mut digest = FileDigest::empty();
        digest.size = size;
        CopyReport {
            bytes: size,
            digest,
            resumed_from: 0,
            elapsed: Duration::from_millis(10),
            verified: true,
        }
    }

    #[test]
    fn finishing_takes_every_bar_off_the_screen_before_the_report() {
        let bars = Bars::new(ProgressDrawTarget::hidden());
        bars.run_started("run 1", 2, 1_000);
        // No byte moved yet: the total exists (its length is known) but is not drawn.
        assert!(lock(&bars.total)
            .as_ref()
            .is_some_and(ProgressBar::is_hidden));
        for (path, size) in [("a", 600), ("b", 400)] {
            bars.file("run 1", &Progress::Started { path, size });
        }
        let (path, done, size) = ("a", 100, 600);
        bars.file("run 1", &Progress::Bytes { path, done, size });
        bars.finish();
        assert_eq!(bars.in_flight(), 0, "a file bar would be drawn again");
        assert_eq!(
            bars.position(),
            (0, 0),
            "the total bar would be drawn again"
        );
    }

    #[test]
    fn total_counts_bytes_in_flight_and_finished_and_drops_failed_ones() {
        let bars = Bars::new(ProgressDrawTarget::hidden());
        bars.run_started("run 1", 3, 1_000);
        for (path, size) in [("a", 600), ("b", 300), ("c", 100)] {
            bars.file("run 1", &Progress::Started { path, size });
        }
        assert_eq!(bars.in_flight(), 3);
        // In flight: the file bars and the total move before any file is finished.
        for (path, done) in [("a", 200), ("b", 150), ("a", 450)] {
            bars.file(
                "run 1",
                &Progress::Bytes {
                    path,
                    done,
                    size: 0,
                },
            );
        }
        assert_eq!(bars.position(), (600, 1_000));
        bars.file(
            "run 1",
            &Progress::Finished {
                path: "a",
                report: &report(600),
            },
        );
        assert_eq!(bars.position(), (750, 1_000));
        let error = TransportError::ConnectionLost {
            host: "mirror".into(),
            path: "b".into(),
            what: "writing".into(),
        };
        bars.file(
            "run 1",
            &Progress::Failed {
                path: "b",
                error: &error,
            },
        );
        bars.file(
            "run 1",
            &Progress::Finished {
                path: "c",
                report: &report(100),
            },
        );
        bars.run_finished("run 1", false);
        assert_eq!(bars.position(), (700, 700));
        assert_eq!(bars.in_flight(), 0);
    }

    #[test]
    fn log_lines_are_written_whole() {
        let mut line = Stderr.make_writer();
        line.write_all(b"part one, ").unwrap();
        line.write_all(b"part two\n").unwrap();
        assert_eq!(line.0, b"part one, part two\n");
        line.0.clear(); // nothing printed by the test on drop
    }
}
