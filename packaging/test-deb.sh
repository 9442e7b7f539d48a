#!/usr/bin/env bash
# Installs the tokend .deb on this machine, checks what it put where and that
# the installed binaries work, then removes it again and checks that its files
# are gone. Exits non-zero if any check fails.
#
#   sudo packaging/test-deb.sh [DEB]
#
# DEB defaults to the newest tokend_*.deb in the cargo target dir's debian/
# (what packaging/build-deb.sh made). Needs root, dpkg and man-db (`man -w`).
# It installs and purges the package "tokend": run it on a CI or throwaway
# machine, not on one where tokend is installed for real. The tokend system
# user the package creates is left in place, as Debian does.
set -euo pipefail
cd "$(dirname "$0")/.."

deb="${1:-}"
if [ -z "$deb" ]; then
    target_dir="${CARGO_TARGET_DIR:-target}"
    deb="$(ls -t "$target_dir"/debian/tokend_*.deb 2>/dev/null | head -n 1 || true)"
fi
[ -f "$deb" ] || { echo "test-deb: no .deb (run packaging/build-deb.sh, or pass DEB)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "test-deb: needs root (dpkg -i)" >&2; exit 2; }
command -v man >/dev/null || { echo "test-deb: man is missing (apt-get install man-db)" >&2; exit 2; }
if grep -qs '^path-exclude' /etc/dpkg/dpkg.cfg.d/*; then
    echo "test-deb: dpkg here skips some paths (path-exclude in /etc/dpkg/dpkg.cfg.d/, as in" \
        "slim container images), so man pages and docs would be missing after install" >&2
    exit 2
fi

failed=0
check() {
    local what="$1"
    shift
    if "$@" >/dev/null 2>&1; then
        echo "ok:   $what"
    else
        echo "FAIL: $what ($*)" >&2
        failed=1
    fi
}
absent() { ! [ -e "$1" ]; }
fails() { ! "$@"; }

# Everything the package must install (paths as a user sees them: /lib is
# /usr/lib on merged-/usr systems).
files=(
    /usr/bin/tokend
    /usr/bin/tokenctl
    /lib/systemd/system/tokend.service
    /lib/systemd/system/tokend.socket
    /usr/lib/systemd/user/tokend.service
    /usr/lib/systemd/user/tokend.socket
    /usr/lib/sysusers.d/tokend.conf
    /usr/lib/tmpfiles.d/tokend.conf
    /usr/share/bash-completion/completions/tokend
    /usr/share/bash-completion/completions/tokenctl
    /usr/share/zsh/vendor-completions/_tokend
    /usr/share/zsh/vendor-completions/_tokenctl
    /usr/share/fish/vendor_completions.d/tokend.fish
    /usr/share/fish/vendor_completions.d/tokenctl.fish
    /usr/share/man/man8/tokend.8.gz
    /usr/share/man/man1/tokenctl.1.gz
    /usr/share/man/man1/tokenctl-login.1.gz
    /usr/share/doc/tokend/copyright
    /usr/share/doc/tokend/CONFIG.md
    /usr/share/doc/tokend/HTTP.md
    /usr/share/doc/tokend/openapi.yaml
    /usr/share/doc/tokend/examples/config.toml
)

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tokend-test-deb.XXXXXX")"
daemon_pid=""
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null
    dpkg --purge tokend >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "== dpkg -i $deb"
dpkg -i "$deb"
check "dpkg knows tokend as installed" sh -c "dpkg-query -W -f='\${Status}' tokend | grep -q 'install ok installed'"

echo "== installed files"
for f in "${files[@]}"; do check "$f" test -f "$f"; done
check "tokend on PATH is /usr/bin/tokend" sh -c '[ "$(command -v tokend)" = /usr/bin/tokend ]'
check "tokend --version" sh -c 'tokend --version | grep -qx "tokend [0-9.]*"'
check "tokenctl --version" sh -c 'tokenctl --version | grep -qx "tokenctl [0-9.]*"'
check "man -w tokenctl" sh -c '[ "$(man -w tokenctl)" = /usr/share/man/man1/tokenctl.1.gz ]'
check "man -w 8 tokend" sh -c '[ "$(man -w 8 tokend)" = /usr/share/man/man8/tokend.8.gz ]'
check "man page renders" sh -c 'man -P cat tokenctl 2>/dev/null | grep -q "EXIT STATUS"'
check "bash completion registers for tokenctl" \
    bash -c 'source /usr/share/bash-completion/completions/tokenctl && complete -p tokenctl'
check "postinst made the tokend user (systemd-sysusers)" getent passwd tokend
check "nothing is enabled on install" sh -c '! ls /etc/systemd/system/*.wants/tokend.* 2>/dev/null'

echo "== the installed binaries work"
# The installed tokend, with the shipped example config, in a temporary dir.
sock="$tmp/run/tokend.sock"
TOKEND_LOG=warn /usr/bin/tokend --socket "$sock" --db "$tmp/state/tokend.db" \
    --config /usr/share/doc/tokend/examples/config.toml 2>"$tmp/tokend.log" &
daemon_pid=$!
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || cat "$tmp/tokend.log" >&2
export TOKEND_SOCKET="$sock"
check "tokenctl add bearer (stdin)" sh -c 'echo deb-test-token | tokenctl add bearer deb'
check "tokenctl token" sh -c '[ "$(tokenctl token deb)" = deb-test-token ]'
kill "$daemon_pid"
wait "$daemon_pid" 2>/dev/null || true
daemon_pid=""
unset TOKEND_SOCKET

echo "== dpkg -r tokend"
dpkg -r tokend
for f in "${files[@]}"; do check "removed: $f" absent "$f"; done
check "tokend no longer on PATH" fails sh -c 'command -v tokend'
check "man -w tokenctl finds nothing" fails man -w tokenctl
dpkg --purge tokend >/dev/null
check "purged: dpkg forgets tokend" fails dpkg-query -W tokend

if [ "$failed" = 0 ]; then
    echo "test-deb: all checks passed"
else
    echo "test-deb: FAILED" >&2
fi
exit "$failed"
