//! Helpers shared by the agent's integration tests (`agent_*.rs`).

use ferry_tests::Sshd;

/// SIGKILLs the sshd processes holding established connections to `sshd`'s port, found
/// with `ss -tnp` (by pid: only processes of this test's own sshd).
pub fn kill_connections(sshd: &Sshd) {
    let filter = format!("( sport = :{} )", sshd.port());
    let out = std::process::Command::new("ss")
        .args(["-tnpH", "state", "established", &filter])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: std::collections::BTreeSet<&str> = text
        .split("pid=")
        .skip(1)
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter(|pid| !pid.is_empty())
        .collect();
    assert!(!pids.is_empty(), "no sshd connection process found: {text}");
    for pid in pids {
        let status = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid}");
    }
}
