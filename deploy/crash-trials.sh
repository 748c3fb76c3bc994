#!/usr/bin/env bash
# Crash trials at scale (issue 5, "Crashes"): runs the kill -9 trials of
# tests/tests/agent_crash.rs (both sites `local`: copy, verify, purge) and
# tests/tests/agent_crash_sftp.rs (both sites behind OpenSSH sshd: push, pull, verify by
# the destination agent, push with the MongoDB-wire catalogue) and
# tests/tests/catalog_outage_journal.rs (kills during the replay of a record journaled while
# the catalogue was down, push over SFTP) with N trials in all (default 100, split evenly
# over the 8 phases), with a fresh random seed per phase, and prints a summary.
#
#   deploy/crash-trials.sh [N]          # from the workspace root
#
# Each phase prints one `crash-summary` line (seed, trials, kills, kills that landed
# mid-work, kills that left a .part file, recoveries, restarts, dead-holder reclaims,
# violations); a failing phase prints
# every violation with its seed (replay: FERRY_CRASH_SEED=S FERRY_CRASH_TRIALS=T cargo test
# -p ferry-tests --test agent_crash, --test agent_crash_sftp or --test catalog_outage_journal). Exit status: 0 when
# every trial kept every invariant. The SFTP trials need sshd and secantusd-rs (or mongod)
# as the test suite does (deploy/install-test-deps.sh; PATH with ~/.cargo/bin).
set -euo pipefail

total="${1:-100}"
case "$total" in
  '' | *[!0-9]*) echo "usage: $0 [N]  (N trials in all, a positive integer)" >&2; exit 2 ;;
esac
phases=8
per_phase=$(( (total + phases - 1) / phases ))
cd "$(dirname "$0")/.."

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
started=$(date +%s)
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
status=0
FERRY_CRASH_TRIALS="$per_phase" cargo test -q --no-fail-fast -p ferry-tests \
  --test agent_crash --test agent_crash_sftp --test catalog_outage_journal -- --nocapture >"$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - started ))
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

summaries="$(grep -o 'crash-summary.*' "$log" || true)"
if [ -z "$summaries" ]; then
  echo "no crash-summary lines: the test did not run; its output:" >&2
  cat "$log" >&2
  exit 1
fi
echo "$summaries"
echo "load average (1, 5, 15 min): before $load_before, after $load_after"
echo "$summaries" | awk -v secs="$elapsed" '
  {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2] }
  }
  END {
    printf "TOTAL trials=%d kills=%d kills_mid_work=%d kills_left_part=%d recovered=%d restarts=%d dead_holder_reclaims=%d violations=%d wall_secs=%d\n",
      v["trials"], v["kills"], v["kills_mid_work"], v["kills_left_part"], v["recovered"], v["restarts"],
      v["dead_holder_reclaims"], v["violations"], secs
  }'
if [ "$status" -ne 0 ]; then
  echo "FAILED: violations or errors follow" >&2
  grep -v 'crash-summary' "$log" | tail -n 80 >&2
fi
exit "$status"
