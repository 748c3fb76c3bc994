#!/usr/bin/env bash
# Transport benchmark: Ferry vs OpenSSH sftp/scp vs rclone's sftp backend, same machine, same
# cipher, one run. Prints a markdown table (MB/s, CPU seconds, peak RSS) to stdout.
#
#   cargo build --release -p bench
#   bench/transport.sh                     # BIG_MB=2048 LONG_MB=512 SMALL_FILES=1000
#
# Cases: one big file push and pull, SMALL_FILES x 1 MiB push, on loopback and through
# delay-proxy (10 ms each way = 20 ms RTT; the long-link file is LONG_MB); on the long link
# also 4 files of LONG_MB/4 uploaded at once (Ferry: 4 in flight over its 4 channels;
# `sftp -b` puts them one after the other, which is what it can do). Ferry's figures
# always include SHA-256 + MD5 (the transport cannot copy without them) and its verification
# is deferred (the others do not verify either). rclone 1.60 has no --sftp-ciphers; Go's SSH
# client offers aes128-gcm@openssh.com first, so it negotiates the same cipher. Page cache is warm for every tool (dropping
# caches is not possible in this sandbox). The throwaway sshd runs with the OpenSSH default
# sftp-server; it and the proxy are stopped by PID at exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
WORK=${WORK:-/tmp/ferry-bench}
BIG_MB=${BIG_MB:-2048}
LONG_MB=${LONG_MB:-512}
SMALL_FILES=${SMALL_FILES:-1000}
PORT=${PORT:-2399}
PROXY_PORT=${PROXY_PORT:-2400}
CIPHER=aes128-gcm@openssh.com
LINKS=${LINKS:-loopback rtt20}   # e.g. LINKS=rtt20 to run only the long-link cases

mkdir -p "$WORK"
cd "$WORK"
rm -rf dst pulled state && mkdir -p dst pulled state

# --- throwaway sshd -------------------------------------------------------------------------
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
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
mkdir -p /run/sshd
{
  echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 hostkey.pub)"
  echo "[127.0.0.1]:$PROXY_PORT $(cut -d' ' -f1,2 hostkey.pub)"
} > known_hosts
/usr/sbin/sshd -D -e -f "$WORK/sshd_config" 2> sshd.log &
SSHD_PID=$!
"$BIN/delay-proxy" --listen "127.0.0.1:$PROXY_PORT" --to "127.0.0.1:$PORT" --delay-ms 10 2> proxy.log &
PROXY_PID=$!
trap 'kill $SSHD_PID $PROXY_PID 2>/dev/null || true' EXIT
sleep 1

# --- data (created once, reused) ------------------------------------------------------------
[ "$(stat -c %s big.bin 2>/dev/null || echo 0)" = $((BIG_MB << 20)) ] ||
  head -c $((BIG_MB << 20)) /dev/urandom > big.bin
[ "$(stat -c %s long.bin 2>/dev/null || echo 0)" = $((LONG_MB << 20)) ] ||
  head -c $((LONG_MB << 20)) /dev/urandom > long.bin
FOUR_MB=$((LONG_MB / 4))
if [ "$(stat -c %s four/f4 2>/dev/null || echo 0)" != $((FOUR_MB << 20)) ]; then
  rm -rf four && mkdir four
  for i in 1 2 3 4; do head -c $((FOUR_MB << 20)) /dev/urandom > "four/f$i"; done
fi
if [ "$(ls small 2>/dev/null | wc -l)" != "$SMALL_FILES" ]; then
  rm -rf small && mkdir small
  for i in $(seq -w 1 "$SMALL_FILES"); do head -c $((1 << 20)) /dev/urandom > "small/f$i"; done
fi

SSHOPT=(-i "$WORK/userkey" -o "UserKnownHostsFile=$WORK/known_hosts" -o StrictHostKeyChecking=yes
        -o BatchMode=yes -c "$CIPHER")
RCLONE_REMOTE() { echo ":sftp,host=127.0.0.1,port=$1,user=$(id -un),key_file=$WORK/userkey,known_hosts_file=$WORK/known_hosts:"; }

echo "| case | tool | MB/s | CPU s | peak RSS MiB |"
echo "|---|---|---:|---:|---:|"

# measure CASE TOOL BYTES -- argv...
measure() {
  local case=$1 tool=$2 bytes=$3; shift 4
  rm -rf "$WORK/dst" "$WORK/pulled" && mkdir -p "$WORK/dst" "$WORK/pulled"
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/state/time" "$@" > "$WORK/state/out" 2>&1 ||
    { echo "| $case | $tool | FAILED: $(tail -c 300 "$WORK/state/out" | tr '\n|' '  ') | | |"; return; }
  read -r wall user sys rss < "$WORK/state/time"
  awk -v c="$case" -v t="$tool" -v b="$bytes" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" \
    'BEGIN { printf "| %s | %s | %.0f | %.1f | %.0f |\n", c, t, b / w / 1e6, u + s, r / 1024 }'
}

FERRY=("$BIN/ferry-bench")
FOPT=(--key "$WORK/userkey" --known-hosts "$WORK/known_hosts" --cipher "$CIPHER")

for link in $LINKS; do
  if [ $link = loopback ]; then P=$PORT; F=big.bin; MB=$BIG_MB; else P=$PROXY_PORT; F=long.bin; MB=$LONG_MB; fi
  BYTES=$((MB << 20))
  echo "put $WORK/$F $WORK/dst/$F" > state/put.batch
  echo "get $WORK/$F $WORK/pulled/$F" > state/get.batch
  measure "$link push ${MB} MiB" ferry $BYTES -- "${FERRY[@]}" push "${FOPT[@]}" --port $P --local "$WORK/$F" --remote "$WORK/dst/$F"
  measure "$link push ${MB} MiB" "sftp -b" $BYTES -- sftp -q "${SSHOPT[@]}" -P $P -b state/put.batch 127.0.0.1
  measure "$link push ${MB} MiB" scp $BYTES -- scp -q "${SSHOPT[@]}" -P $P "$WORK/$F" "127.0.0.1:$WORK/dst/$F"
  # Reference, not a contender: what OpenSSH costs once the two hashes Ferry must compute are
  # added, each by OpenSSL's assembly (SHA-NI; faster than coreutils' sha256sum and md5sum)
  # in its own process, reading the same (cached) file at the same time.
  measure "$link push ${MB} MiB" "sftp -b ∥ openssl sha256 ∥ openssl md5" $BYTES -- bash -c \
    'f=$1; shift; openssl dgst -sha256 "$f" >/dev/null & a=$!; openssl dgst -md5 "$f" >/dev/null & b=$!; "$@"; s=$?; wait $a && wait $b && exit $s' \
    _ "$WORK/$F" sftp -q "${SSHOPT[@]}" -P $P -b state/put.batch 127.0.0.1
  measure "$link push ${MB} MiB" rclone $BYTES -- rclone copyto "$WORK/$F" "$(RCLONE_REMOTE $P)$WORK/dst/$F"
  measure "$link pull ${MB} MiB" ferry $BYTES -- "${FERRY[@]}" pull "${FOPT[@]}" --port $P --remote "$WORK/$F" --local "$WORK/pulled/$F"
  measure "$link pull ${MB} MiB" "sftp -b" $BYTES -- sftp -q "${SSHOPT[@]}" -P $P -b state/get.batch 127.0.0.1
  measure "$link pull ${MB} MiB" scp $BYTES -- scp -q "${SSHOPT[@]}" -P $P "127.0.0.1:$WORK/$F" "$WORK/pulled/$F"
  measure "$link pull ${MB} MiB" rclone $BYTES -- rclone copyto "$(RCLONE_REMOTE $P)$WORK/$F" "$WORK/pulled/$F"

  if [ $link = rtt20 ]; then
    FOUR_BYTES=$((4 * FOUR_MB << 20))
    echo "put -r $WORK/four $WORK/dst/four" > state/putfour.batch
    measure "$link push 4 x ${FOUR_MB} MiB at once" ferry $FOUR_BYTES -- "${FERRY[@]}" push-dir "${FOPT[@]}" --files 4 --port $P --local "$WORK/four" --remote "$WORK/dst/four"
    measure "$link push 4 x ${FOUR_MB} MiB at once" "sftp -b" $FOUR_BYTES -- sftp -q "${SSHOPT[@]}" -P $P -b state/putfour.batch 127.0.0.1
    measure "$link push 4 x ${FOUR_MB} MiB at once" "rclone --transfers 4" $FOUR_BYTES -- rclone copy --transfers 4 "$WORK/four" "$(RCLONE_REMOTE $P)$WORK/dst/four"
  fi

  SMALL_BYTES=$((SMALL_FILES << 20))
  echo "put -r $WORK/small $WORK/dst/small" > state/putdir.batch
  measure "$link push ${SMALL_FILES} x 1 MiB" ferry $SMALL_BYTES -- "${FERRY[@]}" push-dir "${FOPT[@]}" --files 4 --port $P --local "$WORK/small" --remote "$WORK/dst/small"
  measure "$link push ${SMALL_FILES} x 1 MiB" "sftp -b" $SMALL_BYTES -- sftp -q "${SSHOPT[@]}" -P $P -b state/putdir.batch 127.0.0.1
  measure "$link push ${SMALL_FILES} x 1 MiB" "rclone --transfers 4" $SMALL_BYTES -- rclone copy --transfers 4 "$WORK/small" "$(RCLONE_REMOTE $P)$WORK/dst/small"
done
