//! The agent's figures for Prometheus (DESIGN §8): one typed handle, [`Metrics`], held by
//! the tasks' [`Context`](crate::tasks::Context) and by the daemon, and fed by one call at
//! the point where each event happens (a copy finished, a failure recorded, an alarm
//! raised, a work list read). Nothing here is parsed from text: labels are the site map's
//! names and the schema's enums ([`FailureClass`], [`CopyStatus`]).
//!
//! The series are families of the official Prometheus client (`prometheus-client`),
//! rendered in the text exposition format 0.0.4 by [`Metrics::render`];
//! `daemon::metrics` serves them over HTTP. Every series carries `site="<name>"`.
//! Counters are totals since the agent started; gauges describe the last time they were
//! measured. The list, with what each one means, is in `docs/operations.md`.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use catalog_schema::{CopyStatus, FailureClass};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What one task did in a cycle: done, skipped, failed.
pub type TaskCounts = (u64, u64, u64);

/// Run documents the catalogue could not read ([`crate::catalog::Quarantine`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quarantined {
    /// Skips since the agent started (every read that left a document out counts).
    pub skips: u64,
    /// Distinct documents seen unreadable since the agent started.
    pub documents: u64,
}

/// Where a checksum mismatch was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// A copy's bytes, measured while copying or read back at the destination.
    Copy,
    /// The `verify` task re-hashing a copy here (one another agent sent).
    Verify,
    /// The audit re-hashing a transferred copy here (bit rot).
    Audit,
}

impl Check {
    const ALL: [Check; 3] = [Check::Copy, Check::Verify, Check::Audit];

    fn as_str(self) -> &'static str {
        match self {
            Check::Copy => "copy",
            Check::Verify => "verify",
            Check::Audit => "audit",
        }
    }
}

/// Which audit alarm was raised (`tasks::audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alarm {
    /// A data directory missing or empty while the catalogue records copies in it.
    Mount,
    /// More copies than the thresholds allow look lost or corrupt.
    Threshold,
}

impl Alarm {
    const ALL: [Alarm; 2] = [Alarm::Mount, Alarm::Threshold];

    fn as_str(self) -> &'static str {
        match self {
            Alarm::Mount => "mount",
            Alarm::Threshold => "threshold",
        }
    }
}

/// A label value that is one of our enums, written by its stored name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Named(&'static str);

impl EncodeLabelValue for Named {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DataTypeLabel {
    data_type: String,
}

/// A link: the site the bytes came from and the site they went to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LinkLabels {
    from: String,
    to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DestinationLabels {
    to: String,
    data_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabel {
    class: Named,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabel {
    check: Named,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: Named,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: Named,
}

type FloatGauge = Gauge<f64, AtomicU64>;
/// A gauge without labels that is absent until first set (a time that has not happened).
type Once = Family<Vec<(String, String)>, FloatGauge>;

fn set_once(g: &Once, v: f64) {
    g.get_or_create(&Vec::new()).set(v);
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The agent's figures, shared (as `Arc<Metrics>`) by the tasks, the cycle loop and the
/// endpoint. Every method is cheap (atomics, a short lock) and never fails.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cycles: Counter,
    cycles_with_failures: Counter,
    last_cycle_seconds: FloatGauge,
    last_cycle_end: Once,
    last_transfer: Once,
    task_done: Family<TaskLabel, Counter>,
    task_skipped: Family<TaskLabel, Counter>,
    task_failed: Family<TaskLabel, Counter>,
    quarantined_skips: Counter,
    quarantined_documents: Gauge,
    disk_free: Family<DataTypeLabel, Gauge>,
    disk_total: Family<DataTypeLabel, Gauge>,
    catalog_up: Gauge,
    link_bytes: Family<LinkLabels, Counter>,
    link_files: Family<LinkLabels, Counter>,
    link_runs: Family<LinkLabels, Counter>,
    link_last_transfer: Family<LinkLabels, FloatGauge>,
    in_flight: Family<LinkLabels, Gauge>,
    failures: Family<ClassLabel, Counter>,
    mismatches: Family<CheckLabel, Counter>,
    runs_waiting: Family<DestinationLabels, Gauge>,
    site_copies: Family<StatusLabel, Gauge>,
    tape_queue: Gauge,
    audit_alarms: Family<KindLabel, Counter>,
    /// Serialises [`Metrics::record_cycle_with`] (the quarantine counter is set from totals).
    cycle: Mutex<()>,
}

/// Counts a copy in flight on a link while it lives ([`Metrics::copy_started`]).
#[derive(Debug)]
pub struct InFlight {
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Metrics {
    /// Figures for `site`, all zero; the catalogue is not known to answer yet.
    pub fn new(site: &str) -> Arc<Self> {
        let labels = [(Cow::Borrowed("site"), Cow::Owned(site.to_owned()))];
        let mut r = Registry::with_labels(labels.into_iter());
        let m = Metrics {
            cycles: Counter::default(),
            cycles_with_failures: Counter::default(),
            last_cycle_seconds: FloatGauge::default(),
            last_cycle_end: Once::default(),
            last_transfer: Once::default(),
            task_done: Family::default(),
            task_skipped: Family::default(),
            task_failed: Family::default(),
            quarantined_skips: Counter::default(),
            quarantined_documents: Gauge::default(),
            disk_free: Family::default(),
            disk_total: Family::default(),
            catalog_up: Gauge::default(),
            link_bytes: Family::default(),
            link_files: Family::default(),
            link_runs: Family::default(),
            link_last_transfer: Family::default(),
            in_flight: Family::default(),
            failures: Family::default(),
            mismatches: Family::default(),
            runs_waiting: Family::default(),
            site_copies: Family::default(),
            tape_queue: Gauge::default(),
            audit_alarms: Family::default(),
            cycle: Mutex::new(()),
            registry: Registry::default(),
        };
        let up = Gauge::<i64>::default();
        up.set(1);
        r.register("ferry_up", "1 while the agent runs", up);
        r.register(
            "ferry_catalog_up",
            "1 when the catalogue answered the agent's last request to it, 0 while it does not \
             (also while the agent waits for it at start-up)",
            m.catalog_up.clone(),
        );
        r.register(
            "ferry_cycles",
            "Cycles run since the agent started",
            m.cycles.clone(),
        );
        r.register(
            "ferry_cycles_with_failures",
            "Cycles in which some task failed on some run",
            m.cycles_with_failures.clone(),
        );
        r.register(
            "ferry_last_cycle_seconds",
            "Length of the last cycle",
            m.last_cycle_seconds.clone(),
        );
        r.register(
            "ferry_last_cycle_end_timestamp_seconds",
            "When the last cycle ended (Unix time)",
            m.last_cycle_end.clone(),
        );
        r.register(
            "ferry_last_transfer_timestamp_seconds",
            "When a cycle last made a copy (push, pull, retry; Unix time)",
            m.last_transfer.clone(),
        );
        r.register(
            "ferry_task_done",
            "Runs a task completed work on",
            m.task_done.clone(),
        );
        r.register(
            "ferry_task_skipped",
            "Runs a task left alone",
            m.task_skipped.clone(),
        );
        r.register(
            "ferry_task_failed",
            "Runs a task failed on",
            m.task_failed.clone(),
        );
        r.register(
            "ferry_catalog_quarantined",
            "Reads that skipped a run document that does not decode (never written to)",
            m.quarantined_skips.clone(),
        );
        r.register(
            "ferry_catalog_quarantined_documents",
            "Distinct run documents found unreadable since the agent started",
            m.quarantined_documents.clone(),
        );
        r.register(
            "ferry_disk_free_bytes",
            "Free bytes of each data directory's file system",
            m.disk_free.clone(),
        );
        r.register(
            "ferry_disk_total_bytes",
            "Size of each data directory's file system",
            m.disk_total.clone(),
        );
        r.register(
            "ferry_link_copied_bytes",
            "Bytes of the copies finished (verified and recorded) on each link",
            m.link_bytes.clone(),
        );
        r.register(
            "ferry_link_copied_files",
            "Files of the copies finished on each link",
            m.link_files.clone(),
        );
        r.register(
            "ferry_link_copied_runs",
            "Copies (runs of one data type) finished on each link",
            m.link_runs.clone(),
        );
        r.register(
            "ferry_link_last_transfer_timestamp_seconds",
            "When a copy last finished on each link (Unix time)",
            m.link_last_transfer.clone(),
        );
        r.register(
            "ferry_copies_in_flight",
            "Copies this agent is making now, per link",
            m.in_flight.clone(),
        );
        r.register(
            "ferry_copy_failures",
            "Copies recorded as failed (error), by failure class",
            m.failures.clone(),
        );
        r.register(
            "ferry_checksum_mismatches",
            "Copies whose bytes did not match the manifest, by where it was found",
            m.mismatches.clone(),
        );
        r.register(
            "ferry_runs_waiting",
            "Runs wanted at a destination and not yet there, as the copy task's work list \
             read them in the last cycle (one page: at most 100)",
            m.runs_waiting.clone(),
        );
        r.register(
            "ferry_site_copies",
            "Runs with a copy at this site, by the copy's status",
            m.site_copies.clone(),
        );
        r.register(
            "ferry_tape_queue",
            "Copies waiting for the tape task (to back up, or on tape and not yet verified)",
            m.tape_queue.clone(),
        );
        r.register(
            "ferry_audit_alarms",
            "Alarms the audit raised (nothing changed), by kind",
            m.audit_alarms.clone(),
        );
        // Series of known label sets exist from the start, so rates and alerts see a 0.
        for class in FailureClass::ALL {
            drop(m.failures.get_or_create(&ClassLabel {
                class: Named(class.as_str()),
            }));
        }
        for check in Check::ALL {
            drop(m.mismatches.get_or_create(&CheckLabel {
                check: Named(check.as_str()),
            }));
        }
        for kind in Alarm::ALL {
            drop(m.audit_alarms.get_or_create(&KindLabel {
                kind: Named(kind.as_str()),
            }));
        }
        Arc::new(Metrics { registry: r, ..m })
    }

    /// Adds one finished cycle: its length, each task's counts, whether it copied anything
    /// (`copied`), and the data directories' (total, free) bytes.
    pub fn record_cycle(
        &self,
        took: Duration,
        tasks: &[(String, TaskCounts)],
        copied: bool,
        disks: &[(String, (u64, u64))],
    ) {
        self.record_cycle_with(took, tasks, copied, disks, None);
    }

    /// [`Metrics::record_cycle`], with the catalogue's unreadable documents as they stand
    /// at the end of the cycle (totals since start-up, so they replace the last figures).
    pub fn record_cycle_with(
        &self,
        took: Duration,
        tasks: &[(String, TaskCounts)],
        copied: bool,
        disks: &[(String, (u64, u64))],
        quarantined: Option<Quarantined>,
    ) {
        let _one = self.cycle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = unix_now();
        self.cycles.inc();
        if tasks.iter().any(|(_, (_, _, failed))| *failed > 0) {
            self.cycles_with_failures.inc();
        }
        self.last_cycle_seconds.set(took.as_secs_f64());
        set_once(&self.last_cycle_end, now);
        if copied {
            set_once(&self.last_transfer, now);
        }
        for (task, (d, s, f)) in tasks {
            let l = TaskLabel { task: task.clone() };
            self.task_done.get_or_create(&l).inc_by(*d);
            self.task_skipped.get_or_create(&l).inc_by(*s);
            self.task_failed.get_or_create(&l).inc_by(*f);
        }
        for (data_type, (total, free)) in disks {
            let l = DataTypeLabel {
                data_type: data_type.clone(),
            };
            self.disk_total.get_or_create(&l).set(gauge_value(*total));
            self.disk_free.get_or_create(&l).set(gauge_value(*free));
        }
        if let Some(q) = quarantined {
            let seen = self.quarantined_skips.get();
            self.quarantined_skips.inc_by(q.skips.saturating_sub(seen));
            self.quarantined_documents.set(gauge_value(q.documents));
        }
    }

    /// Whether the catalogue answered the last request made to it.
    pub fn catalog_answers(&self, answers: bool) {
        self.catalog_up.set(i64::from(answers));
    }

    /// A copy from site `from` to site `to` starts; it counts in flight until the returned
    /// guard is dropped.
    pub fn copy_started(&self, from: &str, to: &str) -> InFlight {
        let gauge = self.in_flight.get_or_create_owned(&link(from, to));
        gauge.inc();
        InFlight { gauge }
    }

    /// A copy from `from` to `to` of `files` files, `bytes` bytes, is verified and recorded.
    pub fn copied(&self, from: &str, to: &str, files: u64, bytes: u64) {
        let l = link(from, to);
        self.link_bytes.get_or_create(&l).inc_by(bytes);
        self.link_files.get_or_create(&l).inc_by(files);
        self.link_runs.get_or_create(&l).inc();
        self.link_last_transfer.get_or_create(&l).set(unix_now());
    }

    /// A copy was recorded as failed, of this class.
    pub fn failure(&self, class: FailureClass) {
        self.failures
            .get_or_create(&ClassLabel {
                class: Named(class.as_str()),
            })
            .inc();
    }

    /// A copy's bytes did not match the manifest, found by `check`.
    pub fn checksum_mismatch(&self, check: Check) {
        self.mismatches
            .get_or_create(&CheckLabel {
                check: Named(check.as_str()),
            })
            .inc();
    }

    /// The copy task's work list for `data_type` at `to` held `runs` runs this cycle.
    pub fn runs_waiting(&self, to: &str, data_type: &str, runs: usize) {
        let l = DestinationLabels {
            to: to.to_owned(),
            data_type: data_type.to_owned(),
        };
        let n = u64::try_from(runs).unwrap_or(u64::MAX);
        self.runs_waiting.get_or_create(&l).set(gauge_value(n));
    }

    /// `runs` runs have a copy in `status` at this site.
    pub fn site_copies(&self, status: CopyStatus, runs: u64) {
        let l = StatusLabel {
            status: Named(status.as_str()),
        };
        self.site_copies.get_or_create(&l).set(gauge_value(runs));
    }

    /// The tape task found `copies` copies waiting for it this cycle.
    pub fn tape_queue(&self, copies: usize) {
        let n = u64::try_from(copies).unwrap_or(u64::MAX);
        self.tape_queue.set(gauge_value(n));
    }

    /// The audit raised an alarm of this kind.
    pub fn audit_alarm(&self, kind: Alarm) {
        self.audit_alarms
            .get_or_create(&KindLabel {
                kind: Named(kind.as_str()),
            })
            .inc();
    }

    /// The text exposition (format 0.0.4) of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would leave the text short.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("metrics: encoding the series failed: {e}");
        }
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn link(from: &str, to: &str) -> LinkLabels {
    LinkLabels {
        from: from.to_owned(),
        to: to.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_escaped_labels() {
        let m = Metrics::new("da\"q");
        m.record_cycle(
            Duration::from_millis(1500),
            &[("push".into(), (2, 1, 0)), ("purge".into(), (0, 3, 1))],
            true,
            &[("raw".into(), (1000, 400))],
        );
        m.record_cycle(
            Duration::from_millis(500),
            &[("push".into(), (1, 0, 0))],
            false,
            &[("raw".into(), (1000, 300))],
        );
        let text = m.render();
        let has = |series: &str| {
            assert!(text.contains(series), "{series} missing in\n{text}");
        };
        has("ferry_cycles_total{site=\"da\\\"q\"} 2");
        has("ferry_cycles_with_failures_total{site=\"da\\\"q\"} 1");
        has("ferry_task_done_total{site=\"da\\\"q\",task=\"push\"} 3");
        has("ferry_task_failed_total{site=\"da\\\"q\",task=\"purge\"} 1");
        has("ferry_disk_free_bytes{site=\"da\\\"q\",data_type=\"raw\"} 300");
        has("ferry_last_cycle_seconds{site=\"da\\\"q\"} 0.5");
        has("# TYPE ferry_task_done_total counter");
        has("ferry_last_transfer_timestamp_seconds{site=\"da\\\"q\"}");
        has("ferry_catalog_quarantined_total{site=\"da\\\"q\"} 0");
    }

    #[test]
    fn a_time_that_has_not_happened_is_absent() {
        let text = Metrics::new("daq").render();
        assert!(
            !text.contains("ferry_last_transfer_timestamp_seconds{"),
            "{text}"
        );
        assert!(
            !text.contains("ferry_last_cycle_end_timestamp_seconds{"),
            "{text}"
        );
        assert!(text.contains("ferry_catalog_up{site=\"daq\"} 0"), "{text}");
        assert!(text.contains("ferry_up{site=\"daq\"} 1"), "{text}");
    }

    #[test]
    fn quarantined_documents_are_exported() {
        let m = Metrics::new("daq");
        let q = |skips, documents| Some(Quarantined { skips, documents });
        m.record_cycle_with(Duration::from_secs(1), &[], false, &[], q(3, 2));
        m.record_cycle_with(Duration::from_secs(1), &[], false, &[], q(5, 2));
        let text = m.render();
        assert!(
            text.contains("ferry_catalog_quarantined_total{site=\"daq\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("ferry_catalog_quarantined_documents{site=\"daq\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE ferry_catalog_quarantined_total counter"));
    }

    #[test]
    fn links_failures_and_alarms_are_typed_series() {
        let m = Metrics::new("daq");
        {
            let _a = m.copy_started("daq", "mirror");
            let _b = m.copy_started("daq", "mirror");
            assert!(m
                .render()
                .contains("ferry_copies_in_flight{site=\"daq\",from=\"daq\",to=\"mirror\"} 2"));
        }
        m.copied("daq", "mirror", 3, 3000);
        m.copied("daq", "mirror", 2, 100);
        m.failure(FailureClass::Checksum);
        m.checksum_mismatch(Check::Audit);
        m.audit_alarm(Alarm::Mount);
        m.runs_waiting("mirror", "raw", 7);
        m.site_copies(CopyStatus::Transferred, 12);
        m.tape_queue(4);
        m.catalog_answers(true);
        let text = m.render();
        for series in [
            "ferry_copies_in_flight{site=\"daq\",from=\"daq\",to=\"mirror\"} 0",
            "ferry_link_copied_bytes_total{site=\"daq\",from=\"daq\",to=\"mirror\"} 3100",
            "ferry_link_copied_files_total{site=\"daq\",from=\"daq\",to=\"mirror\"} 5",
            "ferry_link_copied_runs_total{site=\"daq\",from=\"daq\",to=\"mirror\"} 2",
            "ferry_link_last_transfer_timestamp_seconds{site=\"daq\",from=\"daq\",to=\"mirror\"}",
            "ferry_copy_failures_total{site=\"daq\",class=\"checksum\"} 1",
            "ferry_copy_failures_total{site=\"daq\",class=\"retryable\"} 0",
            "ferry_checksum_mismatches_total{site=\"daq\",check=\"audit\"} 1",
            "ferry_checksum_mismatches_total{site=\"daq\",check=\"copy\"} 0",
            "ferry_audit_alarms_total{site=\"daq\",kind=\"mount\"} 1",
            "ferry_runs_waiting{site=\"daq\",to=\"mirror\",data_type=\"raw\"} 7",
            "ferry_site_copies{site=\"daq\",status=\"transferred\"} 12",
            "ferry_tape_queue{site=\"daq\"} 4",
            "ferry_catalog_up{site=\"daq\"} 1",
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
        }
    }
}
