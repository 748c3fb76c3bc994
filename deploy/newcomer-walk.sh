#!/usr/bin/env bash
# A newcomer's walk, as the docs tell it: README.md → docs/operations.md (1. Install from
# source, the SSH key and known_hosts, the site map, `config validate --host`) → a second
# site reached over SSH through a `~/.ssh/config` alias → `ferry --once` at the DAQ site
# (4. By hand) → `ferry runs show` / `ferry runs list` (docs/catalog.md). Run by
# deploy/test.sh, so the docs cannot drift from what works.
#
# Everything happens on this machine, under one temp dir: the "transfer host" is a temp
# HOME standing in for /var/lib/ferry (the walk runs as the current user, not a `ferry`
# system user), /etc/ferry and /usr/local are directories under it, and the second site is
# a real OpenSSH sshd on 127.0.0.1, a free port, with a throwaway host key. The catalogue is
# the embedded one (the site map names none). Any step that fails stops the walk with a
# nonzero exit and the doc section it came from.
#
#   bash deploy/newcomer-walk.sh          # builds ferry with `cargo install --debug`
#   FERRY_BIN=target/debug/ferry bash deploy/newcomer-walk.sh   # use a built binary
#   FERRY_WALK_KEEP=1 ...                 # keep the temp dir for a look afterwards
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

SECTION="setup"
step() {
    SECTION="$1"
    printf '\n== %s: %s\n' "$1" "$2"
}
fail() {
    printf 'newcomer-walk: FAILED in %s: %s\n' "$SECTION" "$*" >&2
    printf 'newcomer-walk: the docs and what works disagree there; fix one of them.\n' >&2
    exit 1
}
# Runs a documented command, echoing it; a nonzero exit fails the walk at this section.
run() {
    printf '$ %s\n' "$*"
    "$@" || fail "exit $? from: $*"
}

for tool in ssh-keygen ssh-keyscan sha256sum python3; do
    command -v "$tool" >/dev/null || fail "$tool not found: bash deploy/install-test-deps.sh"
done
SSHD=${FERRY_TEST_SSHD:-/usr/sbin/sshd}
[ -x "$SSHD" ] || fail "$SSHD not found: bash deploy/install-test-deps.sh (openssh-server)"

W=$(mktemp -d "${TMPDIR:-/tmp}/ferry-walk.XXXXXX") || fail "mktemp"
SSHD_PID=
cleanup() {
    if [ -n "$SSHD_PID" ]; then
        kill "$SSHD_PID" 2>/dev/null
        wait "$SSHD_PID" 2>/dev/null
    fi
    if [ -n "${FERRY_WALK_KEEP:-}" ]; then
        echo "newcomer-walk: kept $W"
    else
        rm -rf "$W"
    fi
}
trap cleanup EXIT

# The transfer host, under $W: the agent user's home, /etc/ferry, /usr/local, the DAQ's
# data. Nothing of the caller's environment leaks in (no FERRY_*, no ~/.ssh/config).
for v in $(env | sed -n 's/^\(FERRY_[A-Za-z0-9_]*\)=.*/\1/p'); do
    [ "$v" = FERRY_BIN ] || unset "$v"
done
unset XDG_DATA_HOME XDG_STATE_HOME XDG_CONFIG_HOME
# The Rust toolchain stays the caller's.
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export HOME=$W/home NO_COLOR=1
ETC=$W/etc/ferry
PREFIX=$W/usr/local
mkdir -p "$HOME" "$W/etc" "$PREFIX" || fail "mkdir"

# ---------------------------------------------------------------------------------------
step "README.md, Quick start / docs/operations.md 1. Install (from source)" \
    "build and install the binary"
if [ -n "${FERRY_BIN:-}" ]; then
    # CI has just built it (deploy/test.sh); installing is the same copy.
    [ -x "$FERRY_BIN" ] || fail "FERRY_BIN=$FERRY_BIN is not an executable"
    run install -D -m 0755 "$FERRY_BIN" "$PREFIX/bin/ferry"
else
    command -v cargo >/dev/null || fail "cargo not found: install Rust from https://rustup.rs"
    # The docs' command, with --debug: a release build takes too long for a test run.
    run cargo install --locked --debug --path agent --root "$PREFIX" --quiet
fi
export PATH="$PREFIX/bin:$PATH"
[ "$(command -v ferry)" = "$PREFIX/bin/ferry" ] || fail "ferry on PATH is $(command -v ferry)"
run ferry --version
mkdir -p "$PREFIX/share/man/man1" "$W/etc/bash_completion.d"
ferry generate man | gzip >"$PREFIX/share/man/man1/ferry.1.gz" || fail "ferry generate man"
ferry generate bash >"$W/etc/bash_completion.d/ferry" || fail "ferry generate bash"
[ -s "$W/etc/bash_completion.d/ferry" ] || fail "ferry generate bash printed nothing"
echo "(useradd skipped: the walk runs as $(id -un) with HOME=$HOME for /var/lib/ferry)"

step "docs/operations.md 1. Install (from source)" "the agent's SSH key"
run install -d -m 0700 "$HOME/.ssh"
run ssh-keygen -q -t ed25519 -N '' -f "$HOME/.ssh/id_ed25519"

# ---------------------------------------------------------------------------------------
# The second site, as its admins run it: an sshd with its own host key, the transfer
# account's authorized_keys, and a data directory.
step "docs/operations.md 1. Install: the peer site (a second site over SSH)" \
    "start the mirror's sshd on 127.0.0.1"
M=$W/mirror
mkdir -p "$M/raw" || fail "mkdir"
ssh-keygen -q -t ed25519 -N '' -C mirror-host -f "$M/ssh_host_ed25519_key" || fail "host key"
if [ "$(id -u)" = 0 ]; then
    mkdir -p /run/sshd || fail "mkdir /run/sshd (sshd's privilege separation directory)"
fi
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
banner() {
    # The port answers with an SSH banner.
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && head -c 8 <&3" 2>/dev/null | grep -q '^SSH-2.0'
}
PORT=
for attempt in 1 2 3; do
    p=$(free_port) || fail "choosing a free port"
    cat >"$M/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $p
HostKey $M/ssh_host_ed25519_key
AuthorizedKeysFile $M/authorized_keys
PidFile $M/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
LogLevel VERBOSE
EOF
    "$SSHD" -D -e -f "$M/sshd_config" 2>>"$M/sshd.log" &
    SSHD_PID=$!
    for _ in $(seq 50); do
        banner "$p" && break
        kill -0 "$SSHD_PID" 2>/dev/null || break
        sleep 0.1
    done
    if banner "$p"; then
        PORT=$p
        break
    fi
    kill "$SSHD_PID" 2>/dev/null
    wait "$SSHD_PID" 2>/dev/null
    SSHD_PID=
done
[ -n "$PORT" ] || fail "sshd did not start: $(tail -5 "$M/sshd.log")"
echo "mirror: sshd on 127.0.0.1:$PORT (log $M/sshd.log)"

step "docs/operations.md 1. Install (from source)" \
    "authorize the key at the peer, record its host key"
# "append /var/lib/ferry/.ssh/id_ed25519.pub to the transfer account's authorized_keys"
cat "$HOME/.ssh/id_ed25519.pub" >>"$M/authorized_keys" || fail "authorized_keys"
# "sudo -u ferry ssh-keyscan -p 22 mirror.example.org >> /var/lib/ferry/.ssh/known_hosts"
printf '$ ssh-keyscan -p %s 127.0.0.1 >> %s\n' "$PORT" "$HOME/.ssh/known_hosts"
ssh-keyscan -p "$PORT" 127.0.0.1 2>/dev/null >>"$HOME/.ssh/known_hosts" || fail "ssh-keyscan"
[ -s "$HOME/.ssh/known_hosts" ] || fail "ssh-keyscan recorded no host key"
# "(compare the fingerprints with the ones the peer's admins publish)"
scanned=$(ssh-keygen -lf "$HOME/.ssh/known_hosts" | awk '{print $2}' | sort -u)
published=$(ssh-keygen -lf "$M/ssh_host_ed25519_key.pub" | awk '{print $2}')
[ "$scanned" = "$published" ] || fail "scanned host key $scanned is not the mirror's $published"

step "docs/configuration.md, SSH settings" "the mirror as a ~/.ssh/config alias"
cat >"$HOME/.ssh/config" <<EOF
Host mirror
    HostName 127.0.0.1
    Port $PORT
    User $(id -un)
    IdentityFile ~/.ssh/id_ed25519
EOF
chmod 600 "$HOME/.ssh/config"

# ---------------------------------------------------------------------------------------
step "docs/configuration.md, A complete example / docs/operations.md 1. Install" \
    "the site map (two sites, embedded catalogue) and the secrets file"
DAQ=$W/data/raw
mkdir -p "$DAQ" || fail "mkdir"
# The complete example, cut to what this machine has: no MongoDB (the embedded catalogue),
# no tape, no purge; the mirror reached by its ~/.ssh/config alias.
cat >"$W/site-map.json" <<EOF
{
  "version": 1,
  "sites": [
    {
      "name": "daq",
      "origin": true,
      "data_dirs": { "raw": "$DAQ" },
      "layout": "Run{number:06}",
      "completion": { "marker": "RUN_COMPLETE" },
      "push_to": ["mirror"]
    },
    {
      "name": "mirror",
      "hostname": "mirror",
      "data_dirs": { "raw": "$M/raw" },
      "layout": "Run{number:06}"
    }
  ]
}
EOF
run install -d -m 0750 "$ETC"
run install -m 0644 "$W/site-map.json" "$ETC/site-map.json"
run install -m 0600 deploy/ferry.env "$ETC/ferry.env"
sed -i "s|^#FERRY_CONFIG=.*|FERRY_CONFIG=$ETC/site-map.json|" "$ETC/ferry.env" || fail "sed"
grep -q "^FERRY_CONFIG=$ETC/site-map.json\$" "$ETC/ferry.env" ||
    fail "deploy/ferry.env has no FERRY_CONFIG line to set"

step "docs/operations.md 1. Install" "check everything before starting"
run ferry --config "$ETC/site-map.json" config validate --host daq

# ---------------------------------------------------------------------------------------
step "docs/operations.md 4. By hand" "the DAQ writes run 4711; one cycle at daq"
RUN=$DAQ/Run004711
mkdir -p "$RUN/sub" || fail "mkdir"
head -c 3000000 /dev/urandom >"$RUN/raw_000.bin" || fail "writing the run"
head -c 1000000 /dev/urandom >"$RUN/raw_001.bin" || fail "writing the run"
head -c 12345 /dev/urandom >"$RUN/sub/meta.json" || fail "writing the run"
: >"$RUN/RUN_COMPLETE"
# "As the site's user, with the site map and the site in the environment"
printf '$ export FERRY_CONFIG=%s FERRY_SITE=daq\n' "$ETC/site-map.json"
export FERRY_CONFIG=$ETC/site-map.json FERRY_SITE=daq
run ferry --once --run 4711

# ---------------------------------------------------------------------------------------
step "docs/operations.md 4. By hand / docs/catalog.md, ferry runs" \
    "every copy of the run and its status"
run ferry runs show 4711
ferry runs show 4711 --json >"$W/show.json" || fail "ferry runs show 4711 --json"
python3 - "$W/show.json" <<'EOF' || fail "run 4711 does not have two verified copies (above)"
import json, sys
run = json.load(open(sys.argv[1]))
copies = sorted((d["host"], d["status"]) for d in run.get("data", []))
print("copies:", copies)
ok = [h for h, s in copies if s == "transferred"]
digests = {d.get("checksum") for d in run["data"]}
sys.exit(0 if sorted(ok) == ["daq", "mirror"] and digests == {run.get("digest")} else 1)
EOF
run ferry runs list
ferry runs list --fewer-copies-than 2 >"$W/fewer.txt" || fail "ferry runs list --fewer-copies-than 2"
if grep -q 4711 "$W/fewer.txt"; then
    fail "ferry runs list --fewer-copies-than 2 still lists 4711: $(cat "$W/fewer.txt")"
fi

step "the copy's bytes" "sha256sum at both sites"
(cd "$RUN" && find . -type f ! -name RUN_COMPLETE | sort | xargs sha256sum) >"$W/daq.sha" ||
    fail "sha256sum at daq"
[ -d "$M/raw/Run004711" ] || fail "no Run004711 at the mirror ($M/raw)"
(cd "$M/raw/Run004711" && find . -type f ! -name RUN_COMPLETE | sort | xargs sha256sum) >"$W/mirror.sha" ||
    fail "sha256sum at the mirror"
diff "$W/daq.sha" "$W/mirror.sha" || fail "the mirror's files differ from the DAQ's"
cat "$W/mirror.sha"

printf '\nnewcomer-walk: ok (README → operations.md → a second site over SSH → ferry runs)\n'
