#!/usr/bin/env bash
# Ferry's test command (README.md): installs the test services if missing, then runs every
# test of the workspace against real OpenSSH sshd and a real MongoDB-wire server.
# Extra arguments go to `cargo test` (e.g. a test name filter: `bash deploy/test.sh sftp`); CI passes none.
# Then, in the full run, the Debian package test (deploy/package-test.sh) and the
# newcomer's walk (deploy/newcomer-walk.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash deploy/install-test-deps.sh
# cargo install puts secantusd-rs here; the harness also looks there, but keep PATH honest.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
status=0
cargo test --workspace --locked --no-fail-fast "$@" || status=$?
# The Debian package, installed and removed as an operator would (needs root; CI is), and
# the newcomer's walk through README.md and docs/operations.md to a second site over SSH
# (a few seconds, with the binary the tests just built). Only in the full run, not with a
# test filter.
if [ $# -eq 0 ]; then
    bash deploy/package-test.sh || status=1
    cargo build --workspace --locked --bin ferry &&
        FERRY_BIN="${CARGO_TARGET_DIR:-target}/debug/ferry" bash deploy/newcomer-walk.sh ||
        status=1
fi
exit $status
