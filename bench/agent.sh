#!/usr/bin/env bash
# Agent benchmark: one DAQ site's agent pushing RUNS runs x FILES files to three mirrors, each
# behind its own delay-proxy at 20 ms RTT, the third also throttled to SLOW_RATE bytes/s each
# way. Prints a markdown table to stdout:
#
#   - the agent: `ferry --once --task push` for the whole work (runs registered beforehand);
#   - the ideal: the same agent moving only the slow mirror's share (the slowest link alone);
#   - rclone: three `rclone copy --transfers 4` side by side, one per mirror, same proxies;
#   - a late run: the agent as a daemon (--interval INTERVAL), run RUNS+1 written WRITE_AT s
#     after it started: seconds from the run's completion marker to its registration, and
#     to the first copy of it starting ("copy started" in the log: the claim is taken and
#     its first file admitted; the first byte follows at once).
#
#   cargo build --release -p ferry -p bench
#   bench/agent.sh              # RUNS=20 FILES=8 FILE_MB=2 SLOW_RATE=16000000 INTERVAL=5
#
# The agent's limits: files_in_flight 4, transfers_per_link 4, global_transfers 12, i.e. the
# same 4 streams per mirror rclone gets. Ferry hashes every byte (SHA-256 + MD5) and its
# verification is deferred to the mirrors' agents (`verify: "agent"`; none runs here), as in
# transport.sh; rclone compares size, modification time and, after each upload, the MD5 it
# asks the server for (`md5sum` over SSH). One sshd serves the three mirrors (three data
# directories) behind three proxies: three links for both tools. Page cache warm. sshd and
# the proxies are stopped by PID at exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
WORK=${WORK:-/tmp/ferry-bench-agent}
RUNS=${RUNS:-20}
FILES=${FILES:-8}
FILE_MB=${FILE_MB:-2}
SLOW_RATE=${SLOW_RATE:-16000000}
INTERVAL=${INTERVAL:-5}
WRITE_AT=${WRITE_AT:-4}
PORT=${PORT:-2411}
PROXY=(2412 2413 2414)            # fast-a fast-b slow
MIRRORS=(fast-a fast-b slow)
CIPHER=aes128-gcm@openssh.com

mkdir -p "$WORK"
cd "$WORK"
rm -rf state home logs && mkdir -p state home logs

# --- throwaway sshd and the three proxies -----------------------------------------------
[ -f hostkey ] || ssh-keygen -q -t ed25519 -N '' -f hostkey
[ -f userkey ] || ssh-keygen -q -t ed25519 -N '' -f userkey
cp userkey.pub authorized_keys
cat > sshd_config <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $WORK/hostkey
AuthorizedKeysFile $WORK/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $WORK/sshd.pid
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
mkdir -p /run/sshd
: > known_hosts
for p in $PORT "${PROXY[@]}"; do echo "[127.0.0.1]:$p $(cut -d' ' -f1,2 hostkey.pub)" >> known_hosts; done
/usr/sbin/sshd -D -e -f "$WORK/sshd_config" 2> logs/sshd.log &
PIDS=($!)
"$BIN/delay-proxy" --listen "127.0.0.1:${PROXY[0]}" --to "127.0.0.1:$PORT" --delay-ms 10 2> logs/proxy-a.log &
PIDS+=($!)
"$BIN/delay-proxy" --listen "127.0.0.1:${PROXY[1]}" --to "127.0.0.1:$PORT" --delay-ms 10 2> logs/proxy-b.log &
PIDS+=($!)
"$BIN/delay-proxy" --listen "127.0.0.1:${PROXY[2]}" --to "127.0.0.1:$PORT" --delay-ms 10 --rate "$SLOW_RATE" 2> logs/proxy-slow.log &
PIDS+=($!)
DAEMON=
cleanup() { [ -z "$DAEMON" ] || kill "$DAEMON" 2>/dev/null || true; kill "${PIDS[@]}" 2>/dev/null || true; }
trap cleanup EXIT
sleep 1

# --- data (created once, reused) --------------------------------------------------------
make_run() {  # make_run N
  local dir; dir=$(printf 'daq/raw/Run%06d' "$1")
  if [ "$(ls "$dir" 2>/dev/null | wc -l)" != $((FILES + 1)) ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    for f in $(seq 1 "$FILES"); do head -c $((FILE_MB << 20)) /dev/urandom > "$dir/f$f.bin"; done
    touch "$dir/RUN_COMPLETE"
  fi
}
for n in $(seq 1 "$RUNS"); do make_run "$n"; done
LATE=$((RUNS + 1))
rm -rf "$(printf 'daq/raw/Run%06d' $LATE)"

# --- site maps ----------------------------------------------------------------------------
site_map() {  # site_map FILE MIRROR...
  local out=$1; shift
  local push; push=$(printf '"%s",' "$@"); push="[${push%,}]"
  {
    echo '{ "version": 1, "sites": ['
    echo "  { \"name\": \"daq\", \"origin\": true, \"method\": \"local\", \"push_to\": $push,"
    echo "    \"data_dirs\": { \"raw\": \"$WORK/daq/raw\" }, \"layout\": \"Run{number:06}\","
    echo '    "completion": { "marker": "RUN_COMPLETE" },'
    echo '    "limits": { "files_in_flight": 4, "transfers_per_link": 4, "global_transfers": 12 } }'
    for i in 0 1 2; do
      echo "  ,{ \"name\": \"${MIRRORS[$i]}\", \"method\": \"sftp\", \"hostname\": \"127.0.0.1\","
      echo "    \"port\": ${PROXY[$i]}, \"username\": \"$(id -un)\", \"identity_file\": \"$WORK/userkey\","
      echo "    \"known_hosts\": \"$WORK/known_hosts\", \"strict_host_key_checking\": \"yes\", \"verify\": \"agent\","
      echo "    \"data_dirs\": { \"raw\": \"$WORK/dst-${MIRRORS[$i]}/raw\" }, \"layout\": \"Run{number:06}\" }"
    done
    echo '] }'
  } > "$out"
}
site_map state/all.json "${MIRRORS[@]}"
site_map state/slow.json slow

export HOME=$WORK/home FERRY_STATE_DIR=$WORK/state NO_COLOR=1
ferry() {  # ferry MAP CATALOG ARGS...
  local map=$1 cat=$2; shift 2
  "$BIN/ferry" --config "$WORK/state/$map.json" --host daq --catalog "sqlite:$WORK/state/$cat.sqlite" "$@"
}
fresh() {  # fresh CATALOG: empty mirrors, a new catalogue with the runs registered
  rm -rf dst-* "state/$1.sqlite"*
  for m in "${MIRRORS[@]}"; do mkdir -p "dst-$m/raw"; done
  ferry all "$1" --once --task register > "logs/$1-register.out" 2>&1
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

MB_EACH=$((RUNS * FILES * FILE_MB))
echo "| case | wall s | MB/s moved | vs ideal |"
echo "|---|---:|---:|---:|"

# --- the ideal: the slow mirror's share alone ---------------------------------------------
fresh ideal
t0=$(now); ferry slow ideal --once --task push > logs/ideal.out 2> logs/ideal.log; t1=$(now)
IDEAL=$(secs "$t0" "$t1")
echo "| ideal: the slow mirror's share alone (agent, 1 link) | $IDEAL | $(awk -v m=$MB_EACH -v w="$IDEAL" 'BEGIN{printf "%.0f", m*1.048576/w}') | 1.00 |"

# --- the agent, three mirrors ---------------------------------------------------------------
fresh agent
t0=$(now); ferry all agent --once --task push > logs/agent.out 2> logs/agent.log; t1=$(now)
AGENT=$(secs "$t0" "$t1")
echo "| ferry --once, 3 mirrors | $AGENT | $(awk -v m=$((3 * MB_EACH)) -v w="$AGENT" 'BEGIN{printf "%.0f", m*1.048576/w}') | $(awk -v i="$IDEAL" -v w="$AGENT" 'BEGIN{printf "%.2f", i/w}') |"
grep -c '^  done' logs/agent.out > logs/agent.done || true

# --- rclone, three processes side by side ---------------------------------------------------
rm -rf dst-* && for m in "${MIRRORS[@]}"; do mkdir -p "dst-$m/raw"; done
t0=$(now)
for i in 0 1 2; do
  rclone copy --transfers 4 "$WORK/daq/raw" \
    ":sftp,host=127.0.0.1,port=${PROXY[$i]},user=$(id -un),key_file=$WORK/userkey,known_hosts_file=$WORK/known_hosts:$WORK/dst-${MIRRORS[$i]}/raw" \
    > "logs/rclone-$i.log" 2>&1 &
  RC[$i]=$!
done
wait "${RC[@]}"
t1=$(now)
RCLONE=$(secs "$t0" "$t1")
echo "| 3 x rclone copy --transfers 4, side by side | $RCLONE | $(awk -v m=$((3 * MB_EACH)) -v w="$RCLONE" 'BEGIN{printf "%.0f", m*1.048576/w}') | $(awk -v i="$IDEAL" -v w="$RCLONE" 'BEGIN{printf "%.2f", i/w}') |"

# --- a late run, the agent as a daemon ------------------------------------------------------
fresh late
# Not through the `ferry` function: $! must be the agent itself, for the SIGTERM below.
"$BIN/ferry" --config "$WORK/state/all.json" --host daq --catalog "sqlite:$WORK/state/late.sqlite" \
  --interval "${INTERVAL}s" --task register --task push --log-format json \
  > logs/late.out 2> logs/late.log &
DAEMON=$!
sleep "$WRITE_AT"
make_run "$LATE"
t_written=$(now)
busy=$(grep -c '"copy finished"' logs/late.log || true)
t_registered=
until [ -n "$t_registered" ]; do
  if ferry all late runs show "$LATE" > /dev/null 2>&1; then t_registered=$(now); else sleep 0.1; fi
done
t_first=
until [ -n "$t_first" ]; do
  line=$(grep '"copy started"' logs/late.log | grep "\"run $LATE " | head -1 || true)
  if [ -n "$line" ]; then
    t_first=$(date -d "$(sed -E 's/.*"timestamp":"([^"]+)".*/\1/' <<< "$line")" +%s.%N)
  else
    sleep 0.1
  fi
done
echo
echo "Late run $LATE (daemon, --interval ${INTERVAL}s), written ${WRITE_AT}s after start while $((3 * RUNS - busy)) of the $((3 * RUNS)) older copies were still to finish:"
echo "registered $(secs "$t_written" "$t_registered") s after its marker; its first copy started $(secs "$t_written" "$t_first") s after its marker, $(secs "$t_registered" "$t_first") s after its registration."
until [ "$(grep -c '"copy finished"' logs/late.log || true)" -ge $((3 * LATE)) ]; do sleep 0.5; done
kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=
