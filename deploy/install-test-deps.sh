#!/usr/bin/env bash
# Installs what Ferry's test suite needs on a Debian machine (run as root, or with sudo):
#
#   openssh-server, openssh-client   sshd, ssh, ssh-keygen, ssh-keyscan (tests/src/sshd.rs),
#                                     ssh-agent, ssh-add (tests/src/agent.rs)
#   /run/sshd                         privilege-separation dir root's sshd refuses to start without
#   rclone                            benchmarks compare against it
#   mongod or secantusd-rs            MongoDB-wire server (DESIGN.md §9); mongod cannot be
#                                     installed from this machine's registries, so secantusd-rs
#                                     is built with cargo (about 7 minutes on 2 cores)
#   iproute2, util-linux             ss, ip, unshare, nsenter (a host behind a firewall: tests/src/netns.rs)
#   cargo-deb, dpkg-dev, systemd,    the package test: build the .deb, verify the unit, read the
#   man-db                           man page (deploy/package-test.sh)
#   python3 + pymongo                 a catalogue test reads documents back with pymongo
#   tmux                              progress bars under a real terminal (tests/tests/progress_tmux.rs)
#   prometheus                        a real Prometheus scrapes the daemon; promtool checks its text
#   chromium, chromium-driver         a headless browser driven through WebDriver against
#                                     `ferry serve` (tests/src/chromedriver.rs, tests/tests/serve_browser.rs)
#
# Idempotent: what is already there is skipped (a second run takes seconds), and apt-get update
# runs only when an apt package is missing. Prints one line per item.
# Rust (cargo >= the workspace's rust-version) must already be installed: https://rustup.rs
set -euo pipefail

SECANTUS_CRATE=secantus-mdb
SECANTUS_VERSION=0.5.3-beta.196
# `--profile dev` (the package test reuses the tests' build) is deprecated in later versions.
CARGO_DEB_VERSION="cargo-deb 3.8.0"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

apt_updated=no

report() { printf '%-22s %s\n' "$1" "$2"; }

# have CMD...: all of the commands are on PATH (`command -v a b` succeeds if any one is).
have() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || return 1
    done
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "install-test-deps: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

apt_install() {
    if [ "$apt_updated" = no ]; then
        as_root apt-get update -qq
        apt_updated=yes
    fi
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_apt NAME PACKAGE TEST...: installs PACKAGE unless the command TEST... succeeds.
ensure_apt() {
    local name=$1 package=$2
    shift 2
    if "$@" >/dev/null 2>&1; then
        report "$name" "already there"
    else
        apt_install "$package"
        "$@" >/dev/null 2>&1 || { echo "install-test-deps: $package installed but '$*' still fails" >&2; exit 1; }
        report "$name" "installed ($package)"
    fi
}

if ! have cargo; then
    echo "install-test-deps: cargo not found: install Rust first (https://rustup.rs)" >&2
    exit 1
fi

ensure_apt sshd openssh-server test -x /usr/sbin/sshd
ensure_apt ssh openssh-client have ssh ssh-keygen ssh-keyscan ssh-agent ssh-add
# Tools the tests run as processes: `ss` finds a test sshd's connections to cut them; `kill`
# (not the shell builtin) sends SIGTERM/SIGKILL to agents under test.
ensure_apt ss iproute2 have ss ip
# A firewalled host in its own network namespace (tests/src/netns.rs; needs root).
ensure_apt unshare util-linux have unshare nsenter
ensure_apt kill procps test -x /usr/bin/kill
# The metrics tests: a Prometheus server started by the harness, and `promtool check metrics`.
ensure_apt prometheus prometheus have prometheus promtool

if [ -d /run/sshd ]; then
    report /run/sshd "already there"
else
    as_root install -d -m 0755 /run/sshd
    report /run/sshd "created"
fi

ensure_apt rclone rclone have rclone
ensure_apt tmux tmux have tmux
ensure_apt chromium chromium have chromium
ensure_apt chromedriver chromium-driver have chromedriver

# The package test (deploy/package-test.sh): cargo-deb builds the .deb, dpkg-shlibdeps (in
# dpkg-dev) finds its library dependencies, systemd-analyze verifies the unit, man reads the
# page.
ensure_apt dpkg-shlibdeps dpkg-dev have dpkg-shlibdeps
ensure_apt systemd-analyze systemd have systemd-analyze
ensure_apt man man-db have man
if have cargo-deb && [ "$(cargo-deb --version 2>/dev/null)" = "$CARGO_DEB_VERSION" ]; then
    report cargo-deb "already there"
else
    report cargo-deb "building $CARGO_DEB_VERSION (a few minutes)..."
    cargo install cargo-deb --version "=${CARGO_DEB_VERSION#cargo-deb }" --locked --quiet
    report cargo-deb "installed"
fi

if have mongod; then
    report mongo-wire-server "already there (mongod: $(command -v mongod))"
elif have secantusd-rs; then
    report mongo-wire-server "already there (secantusd-rs: $(command -v secantusd-rs))"
else
    # WiredTiger is built from bundled C sources with CMake.
    ensure_apt cmake cmake have cmake
    ensure_apt cc build-essential have cc make
    report mongo-wire-server "building $SECANTUS_CRATE $SECANTUS_VERSION (about 7 minutes)..."
    # The crate declares a newer rust-version than Debian's toolchains have; it builds anyway.
    cargo install "$SECANTUS_CRATE" --version "=$SECANTUS_VERSION" \
        --ignore-rust-version --locked --quiet
    have secantusd-rs || { echo "install-test-deps: secantusd-rs not on PATH after cargo install" >&2; exit 1; }
    report mongo-wire-server "installed (secantusd-rs: $(command -v secantusd-rs))"
fi

ensure_apt python3 python3 have python3
if python3 -c 'import pymongo' >/dev/null 2>&1; then
    report pymongo "already there"
else
    ensure_apt pip python3-pip python3 -m pip --version
    # Debian's own python3 refuses pip installs into the system (PEP 668); this is a test
    # machine, so install anyway there.
    pip_err=$(mktemp)
    if ! python3 -m pip install --quiet pymongo 2>"$pip_err"; then
        if grep -q externally-managed "$pip_err"; then
            python3 -m pip install --quiet --break-system-packages pymongo
        else
            cat "$pip_err" >&2
            rm -f "$pip_err"
            exit 1
        fi
    fi
    rm -f "$pip_err"
    python3 -c 'import pymongo' || { echo "install-test-deps: pymongo installed but not importable" >&2; exit 1; }
    report pymongo "installed"
fi
