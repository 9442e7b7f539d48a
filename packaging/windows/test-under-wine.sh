#!/usr/bin/env bash
# Runs the Windows build of tokend and tokenctl under Wine, as a new user
# would, and checks what a user does with them (issue 22): status; a bearer
# token added from stdin, then token, header and exec; an oauth2 app added
# with a Windows path for its secret, logged in through the loopback
# listener against the real OAuth2 test server (tests/oidc), its token
# accepted by the userinfo endpoint, two forced refreshes that rotate with
# no reuse; a second tokend.exe on the same pipe refused while the first
# keeps serving; Ctrl-C stopping the daemon cleanly; a restart serving the
# bearer token from the store and refreshing the oauth2 grant.
#
# Usage: bash packaging/windows/test-under-wine.sh
#   Needs wine (Debian: wine64), mingw (gcc-mingw-w64-x86-64) and the Rust
#   target x86_64-pc-windows-gnu, node (the OAuth2 test server; its npm
#   packages are installed if missing) and curl; builds both .exe files
#   unless TOKEND_WIN_BIN names a directory that holds them. Makes its own
#   WINEPREFIX and removes it. Ends with "N passed, M failed"; exit status
#   1 if anything failed.
#
# Not covered yet: client credentials, the device flow and the HTTP API
# under Wine.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin="${TOKEND_WIN_BIN:-$target_dir/x86_64-pc-windows-gnu/debug}"

command -v wine >/dev/null || { echo "test-under-wine: wine is not installed (Debian: apt-get install wine64)" >&2; exit 2; }
if [ -z "${TOKEND_WIN_BIN:-}" ]; then
    cargo build --quiet --locked --target x86_64-pc-windows-gnu -p tokend -p tokend-client \
        --manifest-path "$root/Cargo.toml" || exit 2
fi

work="$(mktemp -d)"
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
daemon_pid=""
idp_pid=""
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null
    [ -n "$idp_pid" ] && kill "$idp_pid" 2>/dev/null
    wineserver -k 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok:   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL: $1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/      /'; }

wineboot -i >/dev/null 2>&1 || { echo "test-under-wine: wineboot failed" >&2; exit 2; }

# The OAuth2 test server (tests/oidc), on a free loopback port.
[ -d "$root/tests/oidc/node_modules" ] ||
    (cd "$root/tests/oidc" && npm ci --no-audit --no-fund --loglevel=error) || exit 2
# The first line that the sed script $2 prints from file $1, waited for
# up to 20 s (a program's output as it comes).
wait_line() {
    local line
    for _ in $(seq 100); do
        line="$(sed -n "$2" "$1" 2>/dev/null | head -n 1 | tr -d '\r')"
        [ -n "$line" ] && { printf '%s\n' "$line"; return 0; }
        sleep 0.2
    done
    return 1
}

(cd "$root/tests/oidc" && PORT=0 ACCESS_TTL=3600 exec node server.mjs >"$work/idp.log" 2>&1) &
idp_pid=$!
issuer="$(wait_line "$work/idp.log" 's/^LISTENING //p')"
[ -n "$issuer" ] || { echo "test-under-wine: the OAuth2 test server did not start" >&2; cat "$work/idp.log" >&2; exit 2; }

# Plays the browser (as tests/src/oidc.rs does): follows redirects, with
# cookies, from the authorize URL until one leaves for the redirect URI.
browse() {
    local url="$1" redirect next
    redirect="$(python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(u.urlparse(sys.argv[1]).query)["redirect_uri"][0])' "$url")"
    for _ in $(seq 12); do
        next="$(curl -s -o /dev/null -c "$work/jar" -b "$work/jar" -w '%{redirect_url}' "$url")"
        [ -n "$next" ] || return 1
        case "$next" in "$redirect"*) curl -s "$next"; return 0 ;; esac
        url="$next"
    done
    return 1
}

# A refresh-token reuse the server saw (every one revokes the grant).
reuses() { curl -s "$issuer/test/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["refresh_token_reuse"])'; }

# Whether the userinfo endpoint accepts the token (header on curl's stdin).
accepted() { printf 'Authorization: Bearer %s' "$1" | curl -s -o /dev/null -w '%{http_code}' -H @- "$issuer/me"; }

# Rust's standard library (1.78+) imports bcryptprimitives.dll, which Wine
# has only from 8.13 on: a stand-in exporting ProcessPrng (bcryptprimitives.c).
version="$(wine --version | sed -E 's/^wine-([0-9]+)\.([0-9]+).*/\1 \2/')"
read -r major minor <<<"$version"
if [ "$major" -lt 8 ] || { [ "$major" -eq 8 ] && [ "$minor" -lt 13 ]; }; then
    x86_64-w64-mingw32-gcc -shared -O2 -Wl,--kill-at -o "$work/bcryptprimitives.dll" \
        "$here/bcryptprimitives.c" -ladvapi32 ||
        { echo "test-under-wine: cannot build the bcryptprimitives.dll stand-in (needs gcc-mingw-w64-x86-64)" >&2; exit 2; }
    cp "$work/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
fi

tokenctl() { timeout 60 wine "$bin/tokenctl.exe" "$@"; }

# Starts tokend.exe in the background (log in $work/tokend-N.log) and
# waits until it says it is ready.
start_daemon() {
    local log="$work/tokend-$1.log"
    wine "$bin/tokend.exe" >"$log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do
        grep -q "ready" "$log" 2>/dev/null && return 0
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.2
    done
    return 1
}

if start_daemon 1; then pass "tokend.exe starts and says it is ready"; else
    fail "tokend.exe starts and says it is ready" "$(cat "$work/tokend-1.log")"; fi

out="$(tokenctl status 2>&1)"
if grep -q 'socket   \\\\.\\pipe\\tokend-' <<<"$out"; then pass "status names the per-user pipe"; else
    fail "status names the per-user pipe" "$out"; fi

out="$(printf 'upp-wine-token-1' | tokenctl add bearer up 2>&1)"
if grep -q 'added bearer credential "up"' <<<"$out"; then pass "add bearer from stdin"; else
    fail "add bearer from stdin" "$out"; fi

out="$(tokenctl token up 2>&1 | tr -d '\r')"
if [ "$out" = "upp-wine-token-1" ]; then pass "token"; else fail "token" "$out"; fi

out="$(tokenctl header up 2>&1 | tr -d '\r')"
if [ "$out" = "Authorization: Bearer upp-wine-token-1" ]; then pass "header"; else fail "header" "$out"; fi

out="$(tokenctl exec up -- cmd /c "echo %TOKEND_TOKEN%" 2>&1 | tr -d '\r')"
if [ "$out" = "upp-wine-token-1" ]; then pass "exec puts the token in the child's environment"; else
    fail "exec puts the token in the child's environment" "$out"; fi

mkdir -p "$WINEPREFIX/drive_c/tokend-test"
printf 'tokend-test-secret' >"$WINEPREFIX/drive_c/tokend-test/app.secret"
out="$(tokenctl add oauth2 app --auth-url "$issuer/auth" --token-url "$issuer/token" \
    --client-id tokend-test --client-secret-file 'C:\tokend-test\app.secret' --scope openid 2>&1)"
if grep -q 'added' <<<"$out"; then pass "add oauth2 with a Windows path for the client secret"; else
    fail "add oauth2 with a Windows path for the client secret" "$out"; fi

wine "$bin/tokenctl.exe" login app --no-browser --timeout 60 >"$work/login.out" 2>"$work/login.err" &
login_pid=$!
url="$(wait_line "$work/login.out" 1p)"
page="$( [ -n "$url" ] && browse "$url")"
wait "$login_pid"
code=$?
if [ "$code" -eq 0 ] && grep -q "Logged in" <<<"$page"; then pass "login --no-browser through the loopback listener"; else
    fail "login --no-browser through the loopback listener (exit $code)" "$(cat "$work/login.out" "$work/login.err")"; fi

first="$(tokenctl token app 2>&1 | tr -d '\r')"
if [ "$(accepted "$first")" = 200 ]; then pass "the oauth2 token is accepted by the provider's userinfo endpoint"; else
    fail "the oauth2 token is accepted by the provider's userinfo endpoint" "$first"; fi

seen="$first"
rotated=yes
for i in 1 2; do
    out="$(tokenctl refresh app 2>&1)"
    token="$(tokenctl token app 2>&1 | tr -d '\r')"
    if grep -qxF -- "$token" <<<"$seen" || [ "$(accepted "$token")" != 200 ]; then rotated="refresh $i: $out / $token"; fi
    seen="$seen"$'\n'"$token"
done
if [ "$rotated" = yes ] && [ "$(reuses)" = 0 ]; then pass "two forced refreshes rotate, each token accepted, no refresh token reused"; else
    fail "two forced refreshes rotate, each token accepted, no refresh token reused" "$rotated; reuses $(reuses)"; fi

out="$(timeout 30 wine "$bin/tokend.exe" 2>&1)"
status=$?
if [ "$status" -ne 0 ] && grep -q "another tokend is already running" <<<"$out"; then
    pass "a second tokend.exe on the same pipe refuses to start"
else
    fail "a second tokend.exe on the same pipe refuses to start (exit $status)" "$out"
fi
out="$(tokenctl token up 2>&1 | tr -d '\r')"
if [ "$out" = "upp-wine-token-1" ]; then pass "the first one still serves"; else
    fail "the first one still serves" "$out"; fi

# A peer is its SID (issue 22): every Wine process runs as one user, so
# only what needs no second user can be shown here — the owner named by
# the user's SID, allow/deny by a SID string round-tripping through the
# store, an account name resolved to its SID, a group refused. Access lists and refusals of another user are
# unit-tested (daemon/src/config/sids.rs) and need a real Windows.
out="$(tokenctl show up 2>&1 | tr -d '\r')"
if grep -Eq '^owner +S-1-5-[0-9-]+ \([0-9]+\)$' <<<"$out"; then pass "show names the owner by the user's SID"; else
    fail "show names the owner by the user's SID" "$out"; fi
other='S-1-5-21-111-222-333-1001'
out="$(tokenctl allow up --user "$other" 2>&1; tokenctl show up 2>&1)"
if grep -q "user $other may now use" <<<"$out" && grep -q "user $other (" <<<"$out"; then
    pass "allow by a SID is kept and shown"
else
    fail "allow by a SID is kept and shown" "$out"
fi
out="$(tokenctl deny up --user "${other,,}" 2>&1; tokenctl show up 2>&1)"
if grep -q "may no longer use" <<<"$out" && grep -Eq '^allowed +owner and admins only' <<<"$out"; then
    pass "deny by the same SID (any case) takes it off"
else
    fail "deny by the same SID (any case) takes it off" "$out"
fi
me="$(tokenctl show up 2>&1 | sed -nE 's/^owner +(S-1-[0-9-]+) .*/\1/p')"
account="$(wine cmd /c 'echo %USERNAME%' 2>/dev/null | tr -d '\r')"
out="$(tokenctl allow up --user "$account" 2>&1; tokenctl deny up --user "$me" 2>&1)"
if [ -n "$me" ] && grep -q "user $me may now use" <<<"$out" && grep -q "user $me may no longer use" <<<"$out"; then
    pass "allow by the account name resolves to the user's SID"
else
    fail "allow by the account name resolves to the user's SID ($account, $me)" "$out"
fi
out="$(tokenctl allow up --group Users 2>&1)"
code=$?
if [ "$code" -eq 2 ] && grep -q "groups are not supported on Windows" <<<"$out"; then pass "a group is refused on Windows"; else
    fail "a group is refused on Windows (exit $code)" "$out"; fi

# Ctrl-C: Wine turns SIGINT into a console control event for the program.
kill -INT "$daemon_pid"
stopped=""
for _ in $(seq 100); do
    kill -0 "$daemon_pid" 2>/dev/null || { stopped=yes; break; }
    sleep 0.2
done
wait "$daemon_pid" 2>/dev/null
code=$?
daemon_pid=""
if [ -n "$stopped" ] && [ "$code" -eq 0 ] && grep -qi "stopped" "$work/tokend-1.log"; then
    pass "Ctrl-C stops the daemon cleanly"
else
    fail "Ctrl-C stops the daemon cleanly (exit $code)" "$(tail -5 "$work/tokend-1.log")"
fi

if start_daemon 2; then pass "tokend.exe starts again"; else
    fail "tokend.exe starts again" "$(cat "$work/tokend-2.log")"; fi
out="$(tokenctl token up 2>&1 | tr -d '\r')"
if [ "$out" = "upp-wine-token-1" ]; then pass "the token is served from the store after a restart"; else
    fail "the token is served from the store after a restart" "$out"; fi

out="$(tokenctl refresh app 2>&1)"
token="$(tokenctl token app 2>&1 | tr -d '\r')"
if ! grep -qxF -- "$token" <<<"$seen" && [ "$(accepted "$token")" = 200 ] && [ "$(reuses)" = 0 ]; then
    pass "after the restart the oauth2 grant still refreshes"
else
    fail "after the restart the oauth2 grant still refreshes" "$out / $token; reuses $(reuses)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
