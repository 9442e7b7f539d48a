#!/usr/bin/env bash
# Self-test of the end-to-end OAuth2 server (server.mjs), with curl only:
# logins with a cookie jar (with and without PKCE), code exchange, rotating
# refreshes, reuse detection and grant revocation, introspection before and
# after expiry, client credentials, client_secret_basic, a denied login, the
# statistics and every fault mode. Exits non-zero on any failure.
#
#   bash tests/oidc/selftest.sh        (runs `npm ci` first if node_modules is missing)
set -u
cd "$(dirname "$0")"

if [ ! -d node_modules/oidc-provider ]; then
  npm ci --no-audit --no-fund --loglevel=error || { echo "npm ci failed"; exit 1; }
fi

TTL=3
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok    $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL  $1"; }
check() { # check NAME ACTUAL EXPECTED
  if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi
}
check_ne() { # check_ne NAME A B
  if [ -n "$2" ] && [ "$2" != "$3" ]; then ok "$1"; else bad "$1: '$2' vs '$3'"; fi
}

# jget JSON PATH (dots; empty when absent)
jget() {
  node -e 'let v; try { v = JSON.parse(process.argv[1]); } catch { process.exit(0); }
    for (const k of process.argv[2].split(".")) v = v?.[k];
    if (v !== undefined && v !== null) process.stdout.write(typeof v === "object" ? JSON.stringify(v) : String(v));' "$1" "$2"
}
# qget URL NAME (a query parameter, decoded)
qget() { node -e 'process.stdout.write(new URL(process.argv[1]).searchParams.get(process.argv[2]) ?? "")' "$1" "$2"; }

# ---- start -------------------------------------------------------------------
PORT=0 ACCESS_TTL=$TTL node server.mjs >"$WORK/out" 2>"$WORK/err" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  grep -q '^LISTENING ' "$WORK/out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
LINE=$(head -n1 "$WORK/out")
ISS=${LINE#LISTENING }
if ! [[ "$LINE" =~ ^LISTENING\ http://127\.0\.0\.1:[0-9]+$ ]]; then
  echo "server did not start: '$LINE'"; cat "$WORK/err"; exit 1
fi
ok "started: $LINE"

DISCOVERY=$(curl -s "$ISS/.well-known/openid-configuration")
check "discovery issuer" "$(jget "$DISCOVERY" issuer)" "$ISS"
check "authorization endpoint" "$(jget "$DISCOVERY" authorization_endpoint)" "$ISS/auth"
check "token endpoint" "$(jget "$DISCOVERY" token_endpoint)" "$ISS/token"
check "introspection endpoint" "$(jget "$DISCOVERY" introspection_endpoint)" "$ISS/token/introspection"
check "userinfo endpoint" "$(jget "$DISCOVERY" userinfo_endpoint)" "$ISS/me"
check "revocation endpoint" "$(jget "$DISCOVERY" revocation_endpoint)" "$ISS/token/revocation"

# ---- helpers -----------------------------------------------------------------
# browse AUTHORIZE_URL REDIRECT_PREFIX -> echoes the final redirect URL (the
# browser's job: follow Location headers with a cookie jar until one leaves
# for the redirect URI; every hop must be a 302/303).
browse() {
  local url=$1 prefix=$2 jar out code next i
  jar=$(mktemp -p "$WORK")
  for i in $(seq 1 10); do
    out=$(curl -s -o /dev/null -c "$jar" -b "$jar" -w '%{http_code} %{redirect_url}' "$url")
    code=${out%% *}
    next=${out#* }
    case "$code" in 302 | 303) ;; *) echo "HOP-$code:$url"; return ;; esac
    if [[ "$next" == "$prefix"* ]]; then echo "$next"; return; fi
    url=$next
  done
  echo "TOO-MANY-HOPS"
}
urlenc() { node -e 'process.stdout.write(encodeURIComponent(process.argv[1]))' "$1"; }
authorize_url() { # CLIENT REDIRECT SCOPE STATE [extra query]
  echo "$ISS/auth?response_type=code&client_id=$1&redirect_uri=$(urlenc "$2")&scope=$(urlenc "$3")&state=$4${5:-}"
}
# token [curl args...] -> sets BODY and STATUS
token() {
  local raw
  raw=$(curl -s -w '\n%{http_code}' -X POST "$ISS/token" "$@")
  STATUS=${raw##*$'\n'}
  BODY=${raw%$'\n'*}
}
POST_AUTH=(-d client_id=tokend-test -d client_secret=tokend-test-secret)
refresh() { token "${POST_AUTH[@]}" -d grant_type=refresh_token --data-urlencode "refresh_token=$1"; }
introspect() { # TOKEN [client_id secret] -> active
  local r
  r=$(curl -s -X POST "$ISS/token/introspection" -d "client_id=${2:-tokend-test}" -d "client_secret=${3:-tokend-test-secret}" --data-urlencode "token=$1")
  jget "$r" active
}
stat() { jget "$(curl -s "$ISS/test/stats")" "$1"; }
setfault() { curl -s -X POST -H 'content-type: application/json' -d "$1" "$ISS/test/fault" >/dev/null; }

# ---- auth code without PKCE, a random loopback port ----------------------------
REDIR="http://127.0.0.1:54321/callback"
FINAL=$(browse "$(authorize_url tokend-test "$REDIR" "openid offline_access api" st-1)" "$REDIR")
CODE=$(qget "$FINAL" code 2>/dev/null)
check_ne "login (no PKCE) redirects with a code: ${FINAL:0:60}" "$CODE" ""
check "state comes back" "$(qget "$FINAL" state)" "st-1"
check "iss comes back" "$(qget "$FINAL" iss)" "$ISS"

token "${POST_AUTH[@]}" -d grant_type=authorization_code --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIR"
check "code exchange (client_secret_post)" "$STATUS" 200
AT0=$(jget "$BODY" access_token)
RT0=$(jget "$BODY" refresh_token)
check_ne "refresh token issued" "$RT0" ""
check "expires_in = ACCESS_TTL" "$(jget "$BODY" expires_in)" "$TTL"
check "token_type" "$(jget "$BODY" token_type)" "Bearer"
check_ne "id_token with openid" "$(jget "$BODY" id_token)" ""
check "scope (offline_access dropped: no prompt=consent)" "$(jget "$BODY" scope)" "openid api"

token "${POST_AUTH[@]}" -d grant_type=authorization_code --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIR"
check "code reuse refused" "$STATUS/$(jget "$BODY" error)" "400/invalid_grant"
check "code reuse revokes the grant (refresh token dead)" "$(introspect "$RT0")" "false"

# A fresh login for the refresh chain.
FINAL=$(browse "$(authorize_url tokend-test "$REDIR" "openid api" st-2)" "$REDIR")
token "${POST_AUTH[@]}" -d grant_type=authorization_code --data-urlencode "code=$(qget "$FINAL" code)" --data-urlencode "redirect_uri=$REDIR"
check "second login, without offline_access, gets tokens" "$STATUS" 200
AT0=$(jget "$BODY" access_token)
RT0=$(jget "$BODY" refresh_token)
check_ne "refresh token issued without offline_access" "$RT0" ""
check "access token active" "$(introspect "$AT0")" "true"
check "refresh token active" "$(introspect "$RT0")" "true"
UI=$(curl -s -H "Authorization: Bearer $AT0" "$ISS/me")
check "userinfo sub" "$(jget "$UI" sub)" "test-user"

curl -s -X POST "$ISS/test/reset" >/dev/null
refresh "$RT0"
check "refresh 1" "$STATUS" 200
RT1=$(jget "$BODY" refresh_token)
AT1=$(jget "$BODY" access_token)
check_ne "refresh 1 rotates the refresh token" "$RT1" "$RT0"
check_ne "refresh 1 gives a new access token" "$AT1" "$AT0"
refresh "$RT1"
check "refresh 2" "$STATUS" 200
RT2=$(jget "$BODY" refresh_token)
AT2=$(jget "$BODY" access_token)
check_ne "refresh 2 rotates" "$RT2" "$RT1"
check "stats: 2 refreshes" "$(stat token_requests.refresh_token)" 2
check "stats: no reuse yet" "$(stat refresh_token_reuse)" 0
check "introspect the rotated refresh token" "$(introspect "$RT0")" "false"

refresh "$RT0"
check "reusing a rotated refresh token: invalid_grant" "$STATUS/$(jget "$BODY" error)" "400/invalid_grant"
check "stats: reuse counted" "$(stat refresh_token_reuse)" 1
check "stats: grant revoked" "$(stat grants_revoked)" 1
refresh "$RT2"
check "after reuse the newest refresh token is dead too" "$STATUS/$(jget "$BODY" error)" "400/invalid_grant"
check "after reuse the access token is inactive" "$(introspect "$AT2")" "false"
check "stats: errors recorded" "$(node -e 'process.stdout.write(String(JSON.parse(process.argv[1]).length))' "$(stat errors)")" 2

# offline_access is kept only with prompt=consent (OIDC Core 11); the login still needs no human.
FINAL=$(browse "$(authorize_url tokend-test "$REDIR" "openid offline_access api" st-c "&prompt=consent")" "$REDIR")
token "${POST_AUTH[@]}" -d grant_type=authorization_code --data-urlencode "code=$(qget "$FINAL" code)" --data-urlencode "redirect_uri=$REDIR"
check "prompt=consent login keeps offline_access" "$STATUS $(jget "$BODY" scope)" "200 openid offline_access api"

# ---- PKCE S256 and the paste redirect (no port) ------------------------------------
VERIFIER=$(node -e 'process.stdout.write(require("crypto").randomBytes(32).toString("base64url"))')
CHALLENGE=$(node -e 'process.stdout.write(require("crypto").createHash("sha256").update(process.argv[1]).digest("base64url"))' "$VERIFIER")
PASTE="http://127.0.0.1/paste-callback"
pkce_login() { browse "$(authorize_url tokend-test "$PASTE" "openid offline_access" "$1" "&code_challenge=$CHALLENGE&code_challenge_method=S256")" "$PASTE"; }
FINAL=$(pkce_login st-p1)
check "PKCE login state" "$(qget "$FINAL" state)" "st-p1"
token "${POST_AUTH[@]}" -d grant_type=authorization_code --data-urlencode "code=$(qget "$FINAL" code)" --data-urlencode "redirect_uri=$PASTE" -d "code_verifier=$VERIFIER"
check "PKCE code exchange" "$STATUS" 200
PRT=$(jget "$BODY" refresh_token)
refresh "$PRT"
check "PKCE grant refreshes" "$STATUS" 200
FINAL=$(pkce_login st-p2)
token "${POST_AUTH[@]}" -d grant_type=authorization_code --data-urlencode "code=$(qget "$FINAL" code)" --data-urlencode "redirect_uri=$PASTE"
check "PKCE: missing verifier refused" "$STATUS/$(jget "$BODY" error)" "400/invalid_grant"
FINAL=$(pkce_login st-p3)
token "${POST_AUTH[@]}" -d grant_type=authorization_code --data-urlencode "code=$(qget "$FINAL" code)" --data-urlencode "redirect_uri=$PASTE" -d "code_verifier=${VERIFIER}x"
check "PKCE: wrong verifier refused" "$STATUS/$(jget "$BODY" error)" "400/invalid_grant"
FINAL=$(browse "$(authorize_url tokend-test "http://127.0.0.1:40001/paste-callback" "openid" st-p4)" "http://127.0.0.1:40001/paste-callback")
check_ne "paste-callback with a port is accepted too" "$(qget "$FINAL" code)" ""

# ---- client_secret_basic, plain OAuth scope (no openid) -------------------------------
BREDIR="http://localhost:34567/callback"
FINAL=$(browse "$(authorize_url tokend-basic "$BREDIR" "api" st-b)" "$BREDIR")
check "basic client login" "$(qget "$FINAL" state)" "st-b"
token -u tokend-basic:tokend-basic-secret -d grant_type=authorization_code --data-urlencode "code=$(qget "$FINAL" code)" --data-urlencode "redirect_uri=$BREDIR"
check "code exchange (client_secret_basic)" "$STATUS" 200
check "no id_token without openid" "$(jget "$BODY" id_token)" ""
BAT=$(jget "$BODY" access_token)
BRT=$(jget "$BODY" refresh_token)
token -d client_id=tokend-basic -d client_secret=tokend-basic-secret -d grant_type=refresh_token --data-urlencode "refresh_token=$BRT"
check "basic client refused with client_secret_post" "$STATUS/$(jget "$BODY" error)" "401/invalid_client"
token -u tokend-basic:tokend-basic-secret -d grant_type=refresh_token --data-urlencode "refresh_token=$BRT"
check "basic client refreshes" "$STATUS" 200
BRT=$(jget "$BODY" refresh_token)
token -u tokend-test:tokend-test-secret -d grant_type=refresh_token -d refresh_token=x
check "post client refused with client_secret_basic" "$STATUS/$(jget "$BODY" error)" "401/invalid_client"
token -d client_id=tokend-test -d client_secret=wrong -d grant_type=refresh_token -d refresh_token=x
check "wrong secret" "$STATUS/$(jget "$BODY" error)" "401/invalid_client"
R=$(curl -s -w ' %{http_code}' "$(authorize_url tokend-test "http://127.0.0.1:5/other" openid st-x)")
check "unregistered redirect path is refused (400 JSON, no redirect)" "$(jget "${R% *}" error) ${R##* }" "invalid_redirect_uri 400"
check "non-loopback redirect is refused" \
  "$(curl -s -o /dev/null -w '%{http_code}' "$(authorize_url tokend-test "http://example.test/callback" openid st-x)")" 400

# ---- denied login -------------------------------------------------------------------
FINAL=$(browse "$(authorize_url tokend-test "$REDIR" "openid" st-deny "&login_hint=deny")" "$REDIR")
check "login_hint=deny -> error=access_denied" "$(qget "$FINAL" error)" "access_denied"
check "denied redirect keeps state" "$(qget "$FINAL" state)" "st-deny"
check "denied redirect has no code" "$(qget "$FINAL" code)" ""

# ---- client credentials ----------------------------------------------------------------
token -d client_id=tokend-cc -d client_secret=tokend-cc-secret -d grant_type=client_credentials
check "client credentials" "$STATUS" 200
CAT=$(jget "$BODY" access_token)
check "client credentials expires_in" "$(jget "$BODY" expires_in)" "$TTL"
check "client credentials: no refresh token" "$(jget "$BODY" refresh_token)" ""
check "cc token active (asked by tokend-cc)" "$(introspect "$CAT" tokend-cc tokend-cc-secret)" "true"
check "stats: client_credentials counted" "$(stat token_success.client_credentials)" 1

# ---- expiry --------------------------------------------------------------------------------
token -u tokend-basic:tokend-basic-secret -d grant_type=refresh_token --data-urlencode "refresh_token=$BRT"
BAT=$(jget "$BODY" access_token)
check "fresh access token active" "$(introspect "$BAT")" "true"
sleep $((TTL + 1))
check "access token inactive after TTL" "$(introspect "$BAT")" "false"
check "cc token inactive after TTL" "$(introspect "$CAT")" "false"

# ---- faults ----------------------------------------------------------------------------------
FINAL=$(browse "$(authorize_url tokend-test "$REDIR" "openid" st-f)" "$REDIR")
token "${POST_AUTH[@]}" -d grant_type=authorization_code --data-urlencode "code=$(qget "$FINAL" code)" --data-urlencode "redirect_uri=$REDIR"
FRT=$(jget "$BODY" refresh_token)
curl -s -X POST "$ISS/test/reset" >/dev/null
# refresh_ok NAME: the current refresh token still works (the fault spent nothing)
refresh_ok() {
  refresh "$FRT"
  if [ "$STATUS" = 200 ]; then ok "$1: refresh token unspent, refresh works after"; FRT=$(jget "$BODY" refresh_token); else bad "$1: refresh after the fault: $STATUS $BODY"; fi
}

setfault '{"mode":"503","count":1}'
refresh "$FRT"
check "fault 503" "$STATUS/$(jget "$BODY" error)" "503/temporarily_unavailable"
refresh_ok "fault 503 (count 1)"

setfault '{"mode":"429","count":1,"retry_after":7}'
HDR=$(curl -s -D - -o /dev/null -X POST "$ISS/token" "${POST_AUTH[@]}" -d grant_type=refresh_token --data-urlencode "refresh_token=$FRT")
check "fault 429 status" "$(echo "$HDR" | head -n1 | awk '{print $2}')" 429
check "fault 429 Retry-After" "$(echo "$HDR" | tr -d '\r' | awk -F': ' 'tolower($1)=="retry-after"{print $2}')" 7
refresh_ok "fault 429"

setfault '{"mode":"drop","count":1}'
curl -s -o /dev/null -X POST "$ISS/token" "${POST_AUTH[@]}" -d grant_type=refresh_token --data-urlencode "refresh_token=$FRT"
RC=$?
if [ $RC = 52 ] || [ $RC = 56 ]; then ok "fault drop: no response (curl exit $RC)"; else bad "fault drop: curl exit $RC"; fi
refresh_ok "fault drop"

setfault '{"mode":"garbage","count":1}'
refresh "$FRT"
check "fault garbage" "$STATUS $BODY" "200 <html>oops</html>"
refresh_ok "fault garbage"

setfault '{"mode":"invalid_grant","count":1}'
refresh "$FRT"
check "fault invalid_grant" "$STATUS/$(jget "$BODY" error)" "400/invalid_grant"
refresh_ok "fault invalid_grant"

setfault '{"mode":"slow","count":1,"delay_ms":1500}'
curl -s -o /dev/null --max-time 0.5 -X POST "$ISS/token" "${POST_AUTH[@]}" -d grant_type=refresh_token --data-urlencode "refresh_token=$FRT"
check "fault slow: client times out" "$?" 28
sleep 1.5
refresh_ok "fault slow, client gone"

setfault '{"mode":"slow","count":1,"delay_ms":800}'
T0=$(date +%s%N)
refresh "$FRT"
MS=$((($(date +%s%N) - T0) / 1000000))
check "fault slow, client waits: processed normally" "$STATUS" 200
if [ $MS -ge 750 ]; then ok "fault slow delayed the answer (${MS} ms)"; else bad "fault slow answered in ${MS} ms"; fi
FRT=$(jget "$BODY" refresh_token)

setfault '{"mode":"stall","count":1,"delay_ms":300}'
refresh "$FRT"
check "fault stall -> 504 without processing" "$STATUS" 504
refresh_ok "fault stall"

setfault '{"mode":"503"}'
refresh "$FRT"; S1=$STATUS
refresh "$FRT"; S2=$STATUS
check "fault without count stays set" "$S1 $S2" "503 503"
setfault '{"mode":"none"}'
refresh_ok "fault none clears it"

setfault '{"mode":"503","count":1,"grant_type":"refresh_token"}'
token -d client_id=tokend-cc -d client_secret=tokend-cc-secret -d grant_type=client_credentials
check "fault limited to a grant_type spares others" "$STATUS" 200
refresh "$FRT"
check "... and hits that grant_type" "$STATUS" 503

check "stats: faulted" "$(stat faulted)" 10
check "stats: faulted refreshes" "$(stat faulted_by_grant.refresh_token)" 10
check "stats: delayed (processed)" "$(stat delayed)" 1
check "stats: refreshes that reached the provider" "$(stat token_requests.refresh_token)" 9
check "stats: every token POST" "$(stat token_posts)" 20
check "stats: no refresh token reused" "$(stat refresh_token_reuse)" 0
check "stats: no grant revoked" "$(stat grants_revoked)" 0
check "bad fault mode is refused" "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{"mode":"nope"}' "$ISS/test/fault")" 400
curl -s -X POST "$ISS/test/reset" >/dev/null
check "reset zeroes counters" "$(stat token_posts)/$(stat faulted)/$(stat fault.mode)" "0/0/none"

# ---- stdout and shutdown -------------------------------------------------------------------
check "stdout holds only the LISTENING line" "$(wc -l <"$WORK/out")" 1
kill -TERM "$SERVER_PID"
for _ in $(seq 1 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER_PID" 2>/dev/null; then bad "SIGTERM: still running"; else wait "$SERVER_PID"; check "SIGTERM: clean exit" "$?" 0; fi
SERVER_PID=

echo
echo "selftest: $PASS passed, $FAIL failed"
if [ $FAIL -ne 0 ]; then echo "--- server stderr ---"; tail -n 40 "$WORK/err"; exit 1; fi
