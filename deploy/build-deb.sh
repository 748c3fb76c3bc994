#!/usr/bin/env bash
# Builds Ferry's Debian package: target/debian/ferry_VERSION-1_ARCH.deb.
#
#   bash deploy/build-deb.sh [--profile PROFILE]    [release]
#
# Builds the binary, writes the man page and the shell completions from the clap definitions
# (`ferry generate …`) into target/PROFILE/generated, then packages with cargo-deb
# (`cargo install cargo-deb --locked` once). Install with `apt install ./target/debian/ferry_*.deb`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=release
if [ "${1:-}" = --profile ]; then
    profile=${2:?--profile needs a name}
fi
case $profile in
    dev) dir=debug ;;
    *) dir=$profile ;;
esac

if ! command -v cargo-deb >/dev/null; then
    echo "build-deb: cargo-deb not found: cargo install cargo-deb --locked" >&2
    exit 1
fi

cargo build --locked --profile "$profile" -p ferry --bin ferry
bin=target/$dir/ferry
mkdir -p target/$dir/generated
"$bin" generate man | gzip -9n >target/$dir/generated/ferry.1.gz
"$bin" generate bash >target/$dir/generated/ferry.bash
"$bin" generate zsh >target/$dir/generated/_ferry
"$bin" generate fish >target/$dir/generated/ferry.fish
cargo deb --locked -p ferry --no-build --profile "$profile" --no-strip
