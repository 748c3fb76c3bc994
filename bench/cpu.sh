#!/usr/bin/env bash
# Machine-wide CPU of one command: wall seconds, and the busy CPU-seconds of all CPUs (user,
# nice, system, irq, softirq from /proc/stat, before and after) while it ran, steal apart.
# Counts what the command's peers cost too (a local sshd and sftp-server, kernel threads):
# the figure a CPU bound on a shared machine needs.
#
#   bench/cpu.sh COMMAND [ARG...]
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
hz=$(getconf CLK_TCK)
read -r _ u n s _ _ q sq st _ < /proc/stat; busy0=$((u + n + s + q + sq)); steal0=$st
t0=$(date +%s.%N)
rc=0; "$@" > /dev/null || rc=$?
t1=$(date +%s.%N)
read -r _ u n s _ _ q sq st _ < /proc/stat; busy1=$((u + n + s + q + sq)); steal1=$st
awk -v rc=$rc -v t0="$t0" -v t1="$t1" -v b=$((busy1 - busy0)) -v st=$((steal1 - steal0)) -v hz="$hz" \
  'BEGIN { printf "exit %d, wall %.2f s, busy CPU %.2f s, steal %.2f s\n", rc, t1 - t0, b / hz, st / hz }'
exit $rc
