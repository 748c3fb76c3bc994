//! What a task did in one cycle, as typed entries: what it was about (a run, a copy, a
//! transfer, a site), the outcome, the failure class when it failed, and the reason.
//! Text is made where the report is shown ([`fmt::Display`], the CLI's report and the
//! daemon's log events); the heartbeat, the metrics and the exit code count entries by
//! outcome, never by parsing lines.
//!
//! The reason is the one part that stays a sentence: it is written for people (what
//! happened and what to do), and nothing reads it back.

use std::fmt;

use catalog_schema::{FailureClass, RunDoc};

use super::Task;

/// How one piece of work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The work was done (copied, verified, removed, registered…).
    Done,
    /// Left alone, with why (nothing to do, another agent holds it, a dry run, kept…).
    Skipped,
    /// It failed, with the cause.
    Failed,
}

impl Outcome {
    /// The word used in logs and JSON (`done`, `skipped`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an entry is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The task or the cycle as a whole (a work list that could not be read, a journal).
    Whole,
    /// A site, a link to it, or one of its data directories.
    Site(String),
    /// A run of one data type at this site (found on disk, registered, adopted).
    Run {
        /// Run number (unknown for a directory whose name gives none).
        number: Option<i64>,
        /// Run name, when the run has one.
        name: Option<String>,
        /// Data type.
        data_type: String,
    },
    /// One copy of a run: at a site, or on a tape backend (`tape`).
    Copy {
        /// Run number.
        number: i64,
        /// Data type.
        data_type: String,
        /// The site, or the tape backend's name.
        host: String,
        /// Whether `host` is a tape backend.
        tape: bool,
    },
    /// A run on its way from one site to another.
    Transfer {
        /// Run number.
        number: i64,
        /// Data type.
        data_type: String,
        /// The site the bytes come from.
        from: String,
        /// The site they go to.
        to: String,
    },
}

impl Subject {
    /// A copy of `run` at a site.
    pub fn copy(run: &RunDoc, data_type: &str, host: &str) -> Self {
        Subject::Copy {
            number: run.number,
            data_type: data_type.to_string(),
            host: host.to_string(),
            tape: false,
        }
    }

    /// A copy of `run` on the tape backend `backend`.
    pub fn tape(run: &RunDoc, data_type: &str, backend: &str) -> Self {
        Subject::Copy {
            number: run.number,
            data_type: data_type.to_string(),
            host: backend.to_string(),
            tape: true,
        }
    }

    /// `run` on its way from `from` to `to`.
    pub fn transfer(run: &RunDoc, data_type: &str, from: &str, to: &str) -> Self {
        Subject::Transfer {
            number: run.number,
            data_type: data_type.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        }
    }

    /// The run number the entry is about, if it is about one run.
    pub fn run_number(&self) -> Option<i64> {
        match self {
            Subject::Run { number, .. } => *number,
            Subject::Copy { number, .. } | Subject::Transfer { number, .. } => Some(*number),
            Subject::Whole | Subject::Site(_) => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Whole => Ok(()),
            Subject::Site(site) => write!(f, "site {site}"),
            Subject::Run {
                number: Some(number),
                name: Some(name),
                data_type,
            } => write!(f, "run {number} ({name}) {data_type}"),
            Subject::Run {
                number: Some(number),
                name: None,
                data_type,
            } => write!(f, "run {number} {data_type}"),
            Subject::Run {
                number: None,
                name,
                data_type,
            } => write!(f, "run {} {data_type}", name.as_deref().unwrap_or("?")),
            Subject::Copy {
                number,
                data_type,
                host,
                tape: true,
            } => write!(f, "run {number} {data_type} on tape {host}"),
            Subject::Copy {
                number,
                data_type,
                host,
                tape: false,
            } => write!(f, "run {number} {data_type}@{host}"),
            Subject::Transfer {
                number,
                data_type,
                from,
                to,
            } => write!(f, "run {number} {data_type} {from} -> {to}"),
        }
    }
}

/// One piece of work and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// How it ended.
    pub outcome: Outcome,
    /// What it was about.
    pub subject: Subject,
    /// For a failure whose class is known: how the retry task treats it.
    pub class: Option<FailureClass>,
    /// Why, for people (may be empty for work done as expected).
    pub reason: String,
}

impl Entry {
    /// A failure of the task or the cycle as a whole.
    pub fn failure(reason: String) -> Self {
        Entry {
            outcome: Outcome::Failed,
            subject: Subject::Whole,
            class: None,
            reason,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.subject, self.reason.is_empty()) {
            (Subject::Whole, _) => f.write_str(&self.reason),
            (s, true) => write!(f, "{s}"),
            (s, false) => write!(f, "{s}: {}", self.reason),
        }
    }
}

/// What one task did in one cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskReport {
    /// In the order the work was done.
    pub entries: Vec<Entry>,
    /// Run documents the task's catalogue reads skipped because they do not decode
    /// ([`crate::catalog::Quarantine`]; every skip counts). Set by [`super::run_cycle`].
    pub quarantined: u64,
}

impl TaskReport {
    /// Adds an entry.
    pub fn add(&mut self, outcome: Outcome, subject: Subject, reason: impl Into<String>) {
        self.entries.push(Entry {
            outcome,
            subject,
            class: None,
            reason: reason.into(),
        });
    }

    /// Work done.
    pub fn did(&mut self, subject: Subject, reason: impl Into<String>) {
        self.add(Outcome::Done, subject, reason);
    }

    /// Work left alone, with why.
    pub fn skip(&mut self, subject: Subject, reason: impl Into<String>) {
        self.add(Outcome::Skipped, subject, reason);
    }

    /// Work that failed, with the cause.
    pub fn fail(&mut self, subject: Subject, reason: impl Into<String>) {
        self.add(Outcome::Failed, subject, reason);
    }

    /// Work that failed, with the cause and its class.
    pub fn fail_as(&mut self, subject: Subject, class: FailureClass, reason: impl Into<String>) {
        self.entries.push(Entry {
            outcome: Outcome::Failed,
            subject,
            class: Some(class),
            reason: reason.into(),
        });
    }

    /// The entries that ended with `outcome`.
    pub fn with(&self, outcome: Outcome) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.outcome == outcome)
    }

    /// How many entries ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.with(outcome).count()
    }

    /// Whether anything failed.
    pub fn has_failures(&self) -> bool {
        self.with(Outcome::Failed).next().is_some()
    }

    /// The work done, as lines for people.
    pub fn done(&self) -> Vec<String> {
        self.lines(Outcome::Done)
    }

    /// The work left alone, as lines for people.
    pub fn skipped(&self) -> Vec<String> {
        self.lines(Outcome::Skipped)
    }

    /// The failures, as lines for people.
    pub fn failed(&self) -> Vec<String> {
        self.lines(Outcome::Failed)
    }

    fn lines(&self, outcome: Outcome) -> Vec<String> {
        self.with(outcome).map(ToString::to_string).collect()
    }
}

/// Logs one task's report for journald and log files: one summary line for the task, then
/// one line per piece of work done or failed, with typed fields (`task`, `outcome`, `run`,
/// `class`); work left alone only at debug level. (`ferry --once` prints the report on
/// stdout instead.)
pub fn log(task: Task, r: &TaskReport) {
    let (done, skipped, failed) = (
        r.count(Outcome::Done),
        r.count(Outcome::Skipped),
        r.count(Outcome::Failed),
    );
    let task = task.name();
    let summary = format!("{task}: {done} done, {skipped} left alone, {failed} failed");
    if failed > 0 {
        tracing::warn!(
            task,
            done,
            skipped,
            failed,
            quarantined = r.quarantined,
            "{summary}"
        );
    } else {
        tracing::info!(
            task,
            done,
            skipped,
            failed,
            quarantined = r.quarantined,
            "{summary}"
        );
    }
    for e in &r.entries {
        let run = e.subject.run_number();
        let outcome = e.outcome.as_str();
        match e.outcome {
            Outcome::Done => tracing::info!(task, outcome, run, "{e}"),
            Outcome::Failed => {
                let class = e.class.map(FailureClass::as_str);
                tracing::warn!(task, outcome, run, class, "{e}");
            }
            Outcome::Skipped => tracing::debug!(task, outcome, run, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_render_as_the_subject_and_the_reason() {
        let mut r = TaskReport::default();
        let copy = Subject::Copy {
            number: 7,
            data_type: "raw".into(),
            host: "mirror".into(),
            tape: false,
        };
        r.did(copy.clone(), "");
        r.skip(
            Subject::Run {
                number: Some(8),
                name: Some("r8".into()),
                data_type: "raw".into(),
            },
            "incomplete",
        );
        r.fail_as(copy, FailureClass::Checksum, "digest differs");
        r.fail(Subject::Whole, "catalogue: unreachable");
        assert_eq!(r.done(), ["run 7 raw@mirror"]);
        assert_eq!(r.skipped(), ["run 8 (r8) raw: incomplete"]);
        assert_eq!(
            r.failed(),
            ["run 7 raw@mirror: digest differs", "catalogue: unreachable"]
        );
        assert_eq!(r.count(Outcome::Failed), 2);
        assert!(r.has_failures());
        let classes: Vec<_> = r.with(Outcome::Failed).map(|e| e.class).collect();
        assert_eq!(classes, [Some(FailureClass::Checksum), None]);
    }

    #[test]
    fn task_names_are_the_ones_the_command_line_takes() {
        for task in super::super::CYCLE_ORDER {
            let value = clap::ValueEnum::to_possible_value(&task);
            assert_eq!(value.as_ref().map(|v| v.get_name()), Some(task.name()));
        }
    }

    #[test]
    fn tape_copies_and_transfers_say_where() {
        let tape = Subject::Copy {
            number: 3,
            data_type: "raw".into(),
            host: "tsm".into(),
            tape: true,
        };
        assert_eq!(tape.to_string(), "run 3 raw on tape tsm");
        let t = Subject::Transfer {
            number: 3,
            data_type: "raw".into(),
            from: "daq".into(),
            to: "mirror".into(),
        };
        assert_eq!(t.to_string(), "run 3 raw daq -> mirror");
        assert_eq!(t.run_number(), Some(3));
        assert_eq!(Subject::Site("daq".into()).run_number(), None);
    }
}
