//! Lease owner ids, and whether the process behind one is provably gone.
//!
//! An agent names itself in every lease and audit event as
//! `site@host:pid/start/nonce`: its site, the host name, its pid, the start time of its
//! process (field 22 of `/proc/PID/stat`, clock ticks since boot) and a random nonce that
//! tells two runs of the agent apart in the audit trail. Older ids (`site@host:pid`) still
//! parse, without start time or nonce.
//!
//! A holder is **provably dead** only when it ran on this host (the same host name) and
//! either no process has its pid, or the process with that pid started at another time
//! (the pid was reused). A holder on another host can never be proved dead from here: its
//! lease must expire. The verify task (a `verifying` copy) and the retry task (a
//! `transferring` copy) take over a dead holder's copy at once with this test.

use std::path::Path;

/// The parts of an owner id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerId<'a> {
    /// The site the agent ran as.
    pub site: &'a str,
    /// The host name it ran on.
    pub host: &'a str,
    /// Its process id.
    pub pid: u32,
    /// Its process start time (clock ticks since boot), when the id records it.
    pub start: Option<u64>,
}

impl<'a> OwnerId<'a> {
    /// Parses `site@host:pid[/start[/nonce]]`; `None` for any other text.
    pub fn parse(owner: &'a str) -> Option<Self> {
        let (site, rest) = owner.split_once('@')?;
        let (host, proc_part) = rest.rsplit_once(':')?;
        let mut parts = proc_part.split('/');
        let pid = parts.next()?.parse().ok()?;
        let start = match parts.next() {
            Some(s) => Some(s.parse().ok()?),
            None => None,
        };
        Some(OwnerId {
            site,
            host,
            pid,
            start,
        })
    }
}

/// This process's owner id for `site`: `site@host:pid/start/nonce`.
pub fn owner_id(site: &str) -> String {
    let host = gethostname::gethostname();
    let pid = std::process::id();
    let start = process_start(pid).unwrap_or(0);
    let nonce: u32 = rand::random();
    format!(
        "{site}@{}:{pid}/{start}/{nonce:08x}",
        host.to_string_lossy()
    )
}

/// The start time of process `pid` (clock ticks since boot), `None` when no such process
/// exists (or `/proc` cannot tell).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses; fields after the
    // last `)` start at field 3, so the start time (field 22) is the 20th of them.
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `owner` was a process on the host of `ours` (this agent's owner id) that is gone:
/// its pid is not alive, or is now a process that started at another time.
pub fn is_dead_local_process(owner: &str, ours: &str) -> bool {
    let (Some(theirs), Some(mine)) = (OwnerId::parse(owner), OwnerId::parse(ours)) else {
        return false;
    };
    if theirs.host != mine.host {
        return false;
    }
    if !Path::new("/proc").join(theirs.pid.to_string()).exists() {
        return true;
    }
    match (theirs.start, process_start(theirs.pid)) {
        // Recorded, and the live process with that pid started at another time.
        (Some(recorded), Some(now)) => recorded != 0 && recorded != now,
        // No start time recorded (an older id), or it vanished between the two looks
        // (then the next cycle sees it gone): not proved.
        _ => false,
    }
}

/// Whether `owner` was an agent of the same site as `ours`, on the same host, whose
/// process is gone: the restarted agent may then take its copies back at once.
pub fn is_dead_predecessor(owner: &str, ours: &str) -> bool {
    match (OwnerId::parse(owner), OwnerId::parse(ours)) {
        (Some(theirs), Some(mine)) if theirs.site == mine.site => {
            is_dead_local_process(owner, ours)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_parse_old_and_new() {
        let old = OwnerId::parse("daq@box.lab:42").unwrap();
        assert_eq!(
            (old.site, old.host, old.pid, old.start),
            ("daq", "box.lab", 42, None)
        );
        let new = OwnerId::parse("daq@box.lab:42/777/0a0b0c0d").unwrap();
        assert_eq!(new.start, Some(777));
        assert_eq!(OwnerId::parse("nonsense"), None);
        assert_eq!(OwnerId::parse("daq@box:x"), None);
        let me = owner_id("daq");
        let parsed = OwnerId::parse(&me).unwrap();
        assert_eq!(parsed.pid, std::process::id());
        assert_eq!(parsed.start, process_start(std::process::id()));
    }

    #[test]
    fn only_dead_or_reused_local_pids_count() {
        let me = owner_id("daq");
        // This very process is alive, with its recorded start time.
        assert!(!is_dead_local_process(&me, &me));
        let host = OwnerId::parse(&me).unwrap().host.to_string();
        let pid = std::process::id();
        // A pid that cannot exist on Linux (above pid_max's hard limit).
        let gone = format!("mirror@{host}:4194305/1/ff");
        assert!(is_dead_local_process(&gone, &me));
        // Our pid, but a different start time: the pid was reused, the holder is gone.
        let reused = format!("daq@{host}:{pid}/1/ff");
        assert!(is_dead_local_process(&reused, &me));
        // An old id naming a live pid: not proved dead.
        assert!(!is_dead_local_process(&format!("daq@{host}:{pid}"), &me));
        // Another host: we cannot tell, so it is not dead.
        assert!(!is_dead_local_process("mirror@there:4194305/1/ff", &me));
        // A predecessor must also be of the same site.
        assert!(is_dead_predecessor(
            &format!("daq@{host}:4194305/1/ff"),
            &me
        ));
        assert!(!is_dead_predecessor(&gone, &me));
    }
}
