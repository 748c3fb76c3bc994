#!/usr/bin/env bash
# Tests the Debian package as an operator meets it (run by deploy/test.sh after the cargo
# tests; needs root, as CI is): builds it (bash deploy/build-deb.sh), installs it with
# `apt-get install ./ferry_*.deb`, checks `ferry --version`, `man ferry`, the bash completion,
# the systemd unit (`systemd-analyze verify`), the user and the file modes, then purges it and
# checks that nothing it installed is left but the state directory.
#
#   bash deploy/package-test.sh [--profile PROFILE]   [dev: reuses the tests' build]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=${2:-dev}
fail() { echo "package-test: FAILED: $*" >&2; exit 1; }
ok() { echo "package-test: ok: $*"; }

[ "$(id -u)" = 0 ] || fail "needs root (installs and removes the package)"
if dpkg -s ferry >/dev/null 2>&1; then
    fail "a ferry package is already installed here; remove it first (dpkg --purge ferry)"
fi

bash deploy/build-deb.sh --profile "$profile" >/dev/null 2>&1 ||
    { bash deploy/build-deb.sh --profile "$profile" | tail -20; fail "build-deb"; }
deb=$(ls -t target/debian/ferry_*.deb | head -1)
ok "built $deb"

trap 'dpkg --purge ferry >/dev/null 2>&1 || true' EXIT
apt-get install -y -qq "./$deb" >/dev/null 2>&1 || dpkg -i "$deb" >/dev/null ||
    fail "installing $deb"
ok "installed"

version=$(ferry --version)
[ "$version" = "ferry $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] ||
    fail "ferry --version says '$version'"
[ "$(command -v ferry)" = /usr/bin/ferry ] || fail "ferry is $(command -v ferry), not /usr/bin/ferry"
ok "$version at /usr/bin/ferry"

page=$(MANPAGER=cat MANWIDTH=100 man ferry 2>&1) || fail "man ferry: $page"
grep -q -- "--once" <<<"$page" || fail "man ferry has no --once: $page"
grep -q "Exit codes" <<<"$page" || fail "man ferry has no exit codes"
ok "man ferry"

# What bash offers after `ferry con<TAB>` and `ferry config <TAB>`.
complete_words() {
    bash -c 'source /usr/share/bash-completion/completions/ferry
             COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
             _ferry ferry "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
             printf "%s\n" "${COMPREPLY[@]}"' _ "$@"
}
complete_words ferry con | grep -qx config || fail "bash completion of 'ferry con': $(complete_words ferry con)"
complete_words ferry config "" | grep -qx validate || fail "bash completion of 'ferry config '"
[ -s /usr/share/zsh/vendor-completions/_ferry ] || fail "no zsh completion"
[ -s /usr/share/fish/vendor_completions.d/ferry.fish ] || fail "no fish completion"
ok "completions (bash checked by completing, zsh and fish present)"

verify=$(systemd-analyze verify ferry@daq.service 2>&1) || fail "systemd-analyze verify: $verify"
# Only lines about our unit count (the container's own units may draw warnings).
if grep -i "ferry" <<<"$verify"; then fail "systemd-analyze verify ferry@daq.service: $verify"; fi
ok "systemd-analyze verify ferry@daq.service"

getent passwd ferry | grep -q ":/var/lib/ferry:" || fail "no system user ferry with home /var/lib/ferry"
[ "$(stat -c %a:%U /etc/ferry/ferry.env)" = 600:root ] || fail "/etc/ferry/ferry.env is $(stat -c %a:%U /etc/ferry/ferry.env)"
[ "$(stat -c %a:%U /var/lib/ferry)" = 750:ferry ] || fail "/var/lib/ferry is $(stat -c %a:%U /var/lib/ferry)"
ok "user ferry, /etc/ferry/ferry.env 0600, /var/lib/ferry 0750"

installed=$(dpkg -L ferry)
trap - EXIT
dpkg --purge ferry >/dev/null || fail "dpkg --purge ferry"
left=""
while read -r path; do
    [ -n "$path" ] || continue
    if [ ! -d "$path" ] && { [ -e "$path" ] || [ -L "$path" ]; }; then left="$left $path"; fi
    # Directories of our own (not shared ones such as /usr/share/man) must be gone too.
    case $path in
        /etc/ferry | /usr/share/doc/ferry | /usr/share/doc/ferry/examples | /usr/share/ferry)
            [ -e "$path" ] && left="$left $path" ;;
    esac
done <<<"$installed"
[ -z "$left" ] || fail "purging left:$left"
ok "purged: nothing left but the state directory /var/lib/ferry"
