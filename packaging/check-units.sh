#!/usr/bin/env bash
# Static checks of tokend's systemd packaging. Fails (non-zero) if any fails.
#
#   packaging/check-units.sh [BINDIR]
#   packaging/check-units.sh --stub-binaries
#
# BINDIR holds the built tokend and tokenctl (default: target/release, else
# target/debug, of this checkout, or $CARGO_TARGET_DIR). --stub-binaries uses
# empty stand-in executables instead, to check the units alone.
#
# 1. systemd-analyze verify of the system units, on the files as they are
#    (byte-identical): they are put in a temporary root whose /usr/bin holds
#    BINDIR's binaries, so no file outside the temporary directory is touched.
# 2. systemd-analyze verify --user of the user units. systemd 252 cannot
#    combine --user with --root, so these are checked from a temporary copy in
#    which only the /usr/bin/tokend of Exec*= lines is replaced by
#    BINDIR/tokend (the script checks that nothing else differs).
# 3. sysusers.d and tmpfiles.d: applied to the temporary root.
# 4. systemd-analyze security --offline=true --threshold=20 on the system
#    service: the overall exposure must be at most 2.0 (--threshold is on
#    a 0-100 scale, ten times the printed exposure figure).
#
# Needs: bash, coreutils, diffutils, sed and systemd (systemd-analyze,
# systemd-sysusers, systemd-tmpfiles; Debian package "systemd", 252 or later).
# systemd need not be running (works in containers and CI). Run as root to
# also check the owner tmpfiles.d gives /run/tokend.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
max_exposure_x10=20

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

bindir=""
stub=0
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    --stub-binaries) stub=1 ;;
    "") ;;
    -*) usage >&2; exit 2 ;;
    *) bindir="$1" ;;
esac

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || {
        echo "check-units: $tool not found (apt-get install systemd)" >&2
        exit 2
    }
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tokend-check-units.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if [ "$stub" = 1 ]; then
    bindir="$tmp/stub-bin"
    mkdir -p "$bindir"
    for b in tokend tokenctl; do
        printf '#!/bin/sh\nexit 0\n' >"$bindir/$b"
        chmod 755 "$bindir/$b"
    done
    echo "check-units: using stand-in binaries (--stub-binaries)"
elif [ -z "$bindir" ]; then
    for d in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release" "$CARGO_TARGET_DIR/debug"} \
        "$repo/target/release" "$repo/target/debug"; do
        if [ -x "$d/tokend" ] && [ -x "$d/tokenctl" ]; then bindir="$d"; break; fi
    done
    if [ -z "$bindir" ]; then
        echo "check-units: no built tokend/tokenctl found; run cargo build, pass BINDIR, or use --stub-binaries" >&2
        exit 2
    fi
fi
[ -d "$bindir" ] || { echo "check-units: $bindir is not a directory" >&2; exit 2; }
bindir="$(cd "$bindir" && pwd)"
for b in tokend tokenctl; do
    [ -f "$bindir/$b" ] && [ -x "$bindir/$b" ] || {
        echo "check-units: $bindir/$b is missing or not executable" >&2
        exit 2
    }
done
echo "check-units: binaries from $bindir"

passed=0
failed=0
fail() { echo "FAIL: $*" >&2; failed=$((failed + 1)); }
pass() { echo "ok:   $*"; passed=$((passed + 1)); }

# --- a temporary root: systemd's own units, the binaries, our files ---------
root="$tmp/root"
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system" \
    "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" "$root/run" "$root/var/lib"
ln -s usr/bin "$root/bin"
ln -s usr/lib "$root/lib"
ln -s usr/bin "$root/usr/sbin"
# The units tokend's depend on (sysinit.target, network-online.target, ...).
for d in system user; do
    [ -d "/usr/lib/systemd/$d" ] && cp -a "/usr/lib/systemd/$d" "$root/usr/lib/systemd/"
done
cp "$bindir/tokend" "$bindir/tokenctl" "$root/usr/bin/"
# ExecReload=/bin/kill comes from procps on the target system.
if [ -x /bin/kill ]; then
    cp /bin/kill "$root/usr/bin/kill"
else
    echo "note: /bin/kill (Debian package procps) is not installed here; using a stand-in" >&2
    printf '#!/bin/sh\n' >"$root/usr/bin/kill"
    chmod 755 "$root/usr/bin/kill"
fi
printf '#!/bin/sh\n' >"$root/usr/bin/nologin"
chmod 755 "$root/usr/bin/nologin"
cp "$here"/systemd/system/tokend.service "$here"/systemd/system/tokend.socket \
    "$root/etc/systemd/system/"

# --- 1. system units ----------------------------------------------------------
echo "== systemd-analyze verify (system): tokend.service tokend.socket"
if systemd-analyze verify --man=no --recursive-errors=yes --root="$root" \
    tokend.service tokend.socket; then
    pass "system units verify"
else
    fail "systemd-analyze verify of the system units"
fi

# --- 2. user units --------------------------------------------------------------
echo "== systemd-analyze verify --user: tokend.service tokend.socket"
user="$tmp/user"
mkdir -p "$user/units" "$user/runtime" "$user/home"
chmod 700 "$user/runtime"
cp "$here"/systemd/user/tokend.service "$here"/systemd/user/tokend.socket "$user/units/"
sed -i "s#^\(Exec[A-Za-z]*=[-@:+!|]*\)/usr/bin/tokend\b#\1$root/usr/bin/tokend#" \
    "$user/units/tokend.service"
# Only Exec lines may differ, and only in the binary's path.
if diff <(sed "s#$root/usr/bin/tokend#/usr/bin/tokend#" "$user/units/tokend.service") \
    "$here/systemd/user/tokend.service" >/dev/null &&
    cmp -s "$user/units/tokend.socket" "$here/systemd/user/tokend.socket"; then
    if env -u DBUS_SESSION_BUS_ADDRESS HOME="$user/home" XDG_RUNTIME_DIR="$user/runtime" \
        XDG_CONFIG_HOME="$user/home/.config" \
        systemd-analyze verify --user --man=no --recursive-errors=yes \
        "$user/units/tokend.service" "$user/units/tokend.socket"; then
        pass "user units verify"
    else
        fail "systemd-analyze verify --user of the user units"
    fi
else
    fail "internal: the rewritten user units differ from the originals beyond ExecStart"
fi

# --- 3. sysusers.d and tmpfiles.d ---------------------------------------------
echo "== systemd-sysusers / systemd-tmpfiles --create (in the temporary root)"
cp "$here/sysusers.d/tokend.conf" "$root/usr/lib/sysusers.d/tokend.conf"
cp "$here/tmpfiles.d/tokend.conf" "$root/usr/lib/tmpfiles.d/tokend.conf"
mkdir -p "$root/etc"
: >"$root/etc/passwd"
: >"$root/etc/group"
if systemd-sysusers --root="$root" tokend.conf &&
    grep -q '^tokend:x:[0-9]*:[0-9]*:tokend credential broker:/var/lib/tokend:/usr/sbin/nologin$' "$root/etc/passwd" &&
    grep -q '^tokend:x:' "$root/etc/group"; then
    pass "sysusers.d/tokend.conf creates user and group tokend"
else
    fail "sysusers.d/tokend.conf"
fi
set +e
out="$(systemd-tmpfiles --root="$root" --create tokend.conf 2>&1)"
rc=$?
set -e
uid="$(awk -F: '$1 == "tokend" { print $3 }' "$root/etc/passwd")"
gid="$(awk -F: '$1 == "tokend" { print $3 }' "$root/etc/group")"
want="750 $uid $gid"
if [ "$(id -u)" != 0 ]; then
    # Not root: the chown to tokend must fail; check everything else.
    out="$(printf '%s\n' "$out" | grep -v '^fchownat() of .* failed: Operation not permitted$' || true)"
    rc=0
    want="750 $(id -u) $(id -g)"
    echo "note: not root, so the owner of /run/tokend (tokend:tokend) is not checked"
fi
got="$(stat -c '%a %u %g' "$root/run/tokend" 2>/dev/null || true)"
if [ "$rc" != 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    fail "systemd-tmpfiles --create tokend.conf"
elif [ "$got" = "$want" ] &&
    [ "$(stat -c %a "$root/etc/credstore")" = 700 ] &&
    [ "$(stat -c %a "$root/etc/credstore.encrypted")" = 700 ]; then
    pass "tmpfiles.d/tokend.conf creates /run/tokend 0750 tokend:tokend and /etc/credstore*"
else
    fail "tmpfiles.d/tokend.conf: /run/tokend is '$got', want '$want'"
fi

# --- 4. exposure ----------------------------------------------------------------
echo "== systemd-analyze security --offline=true --threshold=$max_exposure_x10 (exposure <= $((max_exposure_x10 / 10)).$((max_exposure_x10 % 10)))"
service="$here/systemd/system/tokend.service"
set +e
report="$(systemd-analyze security --no-pager --offline=true \
    --threshold="$max_exposure_x10" "$service" 2>&1)"
rc=$?
set -e
exposure="$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for tokend\.service: \([0-9.]*\).*/\1/p' | tail -n1)"
if [ "$rc" = 0 ] && [ -n "$exposure" ]; then
    pass "exposure of the system tokend.service: $exposure (threshold $((max_exposure_x10 / 10)).$((max_exposure_x10 % 10)))"
else
    printf '%s\n' "$report" | grep -v '^✓' >&2
    fail "exposure of the system tokend.service: ${exposure:-unknown} (threshold $((max_exposure_x10 / 10)).$((max_exposure_x10 % 10)), systemd-analyze exit $rc)"
fi
echo "exposure: ${exposure:-unknown}"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
