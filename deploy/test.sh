#!/usr/bin/env bash
# Ferry's test command (README.md): installs the test services if missing, then runs every
# test of the workspace against real OpenSSH sshd and a real MongoDB-wire server.
# Extra arguments go to `cargo test` (e.g. a test name filter: `bash deploy/test.sh sftp`); CI passes none.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash deploy/install-test-deps.sh
# cargo install puts secantusd-rs here; the harness also looks there, but keep PATH honest.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
exec cargo test --workspace --locked --no-fail-fast "$@"
