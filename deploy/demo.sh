#!/usr/bin/env bash
# Ferry's main job on one machine, with no servers to set up: sample runs at a DAQ site,
# the embedded catalogue (SQLite), one agent cycle, then the catalogue as collaborators see
# it. Everything lives under /tmp/ferry-demo (site-configs/demo-local.json); a second run
# starts from scratch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

demo=/tmp/ferry-demo
map=site-configs/demo-local.json
catalog="sqlite:$demo/catalog.sqlite"

echo "==> building ferry"
cargo build --quiet --locked -p ferry
ferry=target/debug/ferry

echo "==> sample data under $demo"
rm -rf "$demo"
mkdir -p "$demo/daq/raw" "$demo/mirror/raw" "$demo/tape" "$demo/state"
export FERRY_STATE_DIR="$demo/state"   # the agent's lock file lives here, not in \$HOME
for run in 1 2 3; do
  dir="$demo/daq/raw/Run$(printf %06d "$run")"
  mkdir -p "$dir"
  for f in 000 001 002; do
    head -c $((run * 1024 * 1024 + 10#$f)) /dev/urandom > "$dir/$f.evio"
  done
  : > "$dir/empty.evio"                 # an empty file is a file like any other
  [ "$run" -lt 3 ] && : > "$dir/RUN_COMPLETE"   # run 3 is still being written
  echo "    $dir: $(ls "$dir" | tr '\n' ' ')"
done

echo "==> checking the site map: $map"
"$ferry" config validate --config "$map"

echo "==> one agent cycle at the DAQ site: register complete runs, push them to the mirror"
echo "    (every task runs in cycle order; those with nothing to do say so)"
"$ferry" --config "$map" --host daq --once

echo "==> one agent cycle at the mirror: back its copies up to the directory tape backend"
"$ferry" --config "$map" --host mirror --once

# The DAQ site's purge policy (site-configs/demo-local.json): a copy may go once one other
# verified copy exists, one of them on tape, the run is older than the retention (5 s here,
# so the demo need not wait long) and the disk is over the high-water mark (80 %), or an
# operator asks for the run.
sleep 6
echo "==> what a purge at the DAQ site would remove, and why (dry run: nothing changes)"
echo "    (runs 1 and 2 are protected and old enough; this disk's fullness decides)"
"$ferry" --config "$map" --host daq --once --task purge --dry-run

echo "==> an operator asks to free run 1 at the DAQ site: first the dry run, then for real"
"$ferry" --config "$map" --host daq --once --task purge --run 1 --dry-run | tee "$demo/purge-dry-run.txt"
grep -q "would remove" "$demo/purge-dry-run.txt" || { echo "demo: the purge dry run would not remove run 1" >&2; exit 1; }
"$ferry" --config "$map" --host daq --once --task purge --run 1
if [ -e "$demo/daq/raw/Run000001" ]; then
  echo "demo: run 1 is still on the DAQ disk after the purge" >&2; exit 1
fi
echo "    $demo/daq/raw now holds: $(ls "$demo/daq/raw" | tr '\n' ' ')"

echo "==> the catalogue, as collaborators query it"
"$ferry" runs list --catalog "$catalog"
echo
"$ferry" runs show 1 --catalog "$catalog"
echo
"$ferry" runs show 2 --catalog "$catalog"

echo
echo "Done: runs 1 and 2 are registered with their manifests and run digests (SHA-256 + MD5"
echo "of every file), copied to the mirror, where every file was read back and matched before"
echo "the copy was recorded as transferred, and backed up by the mirror to the directory tape"
echo "backend under $demo/tape (verified before it was recorded). Run 3 has no completion"
echo "marker yet, so it was left alone. The first purge dry run says, run by run, what the DAQ"
echo "site would remove or keep and why (the runs are protected and old enough; whether this"
echo "disk is over the high-water mark decides); asked for run 1, the dry run says it would"
echo "remove it and why (verified copies at the mirror and on tape, older than the retention),"
echo "and the real purge deleted its files and its DAQ copy from the catalogue: runs show 1"
echo "lists only the mirror and tape copies, run 2 still has all three."
