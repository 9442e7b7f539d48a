#!/usr/bin/env bash
# Runtime smoke test of tokend's systemd packaging, under a real systemd.
#
#   sudo packaging/smoke-test-systemd.sh [BINDIR]
#
# For machines where systemd is NOT PID 1 (containers, CI): boots a throwaway
# systemd as PID 1 of new PID/mount/cgroup namespaces, on an overlay of / whose
# writes go to a tmpfs, installs BINDIR's tokend and tokenctl (default:
# target/release, else target/debug) and packaging/'s units, sysusers.d and
# tmpfiles.d files in it, and checks that:
#   - tokend.service starts (Type=notify) without the socket unit, with
#     socket_group = "tokend" in config.toml, sandboxed
#     (seccomp, no_new_privs, no capabilities), socket 0660 tokend:tokend in
#     /run/tokend 0750; a member of group tokend can connect, others cannot;
#     per-user access checks (SO_PEERCRED) work; reload works;
#   - it reaches an OAuth2 token endpoint by host name over HTTP and HTTPS
#     (system trust store), if python3 (and openssl, ca-certificates) exist;
#   - tokend.socket activates it, and the socket survives a service stop;
#   - the sealing key is taken from /etc/credstore/tokend.key and from an
#     encrypted credential (systemd-creds) when present;
#   - the user units work in a user manager (if dbus-daemon is installed).
# Nothing outside its temporary directory (and a cgroup it creates and removes)
# is changed. Needs root, util-linux (unshare, nsenter), systemd, overlayfs and
# cgroup2 in the kernel; python3, openssl, ca-certificates and dbus are used
# when present (the tests that need them are skipped otherwise). Prints
# "N passed, N failed" and exits non-zero on any failure. On a machine that
# runs systemd as PID 1, install the units for real instead.
# SMOKE_HOLD=SECONDS keeps the throwaway systemd up that long at the end, to
# inspect it with nsenter.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

# --- inner: becomes PID 1 of the new namespaces -----------------------------
if [ "${1:-}" = "--inner" ]; then
    tmp="$2" bindir="$3"
    set -x
    mount -t tmpfs tmpfs "$tmp/ns"
    mkdir -p "$tmp/ns/upper" "$tmp/ns/work" "$tmp/ns/root"
    r="$tmp/ns/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$tmp/ns/upper,workdir=$tmp/ns/work" "$r"
    mount --rbind /dev "$r/dev"
    mount -t proc proc "$r/proc"
    mount -t sysfs sysfs "$r/sys"
    mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
    mount -t tmpfs tmpfs "$r/run"
    mount -t tmpfs tmpfs "$r/tmp"
    install -m 755 "$bindir/tokend" "$bindir/tokenctl" "$r/usr/bin/"
    mkdir -p "$r/etc/systemd/system" "$r/etc/systemd/user" "$r/usr/lib/sysusers.d" "$r/usr/lib/tmpfiles.d"
    cp "$here/systemd/system/tokend.service" "$here/systemd/system/tokend.socket" "$r/etc/systemd/system/"
    cp "$here/systemd/user/tokend.service" "$here/systemd/user/tokend.socket" "$r/usr/lib/systemd/user/"
    cp "$here/sysusers.d/tokend.conf" "$r/usr/lib/sysusers.d/"
    cp "$here/tmpfiles.d/tokend.conf" "$r/usr/lib/tmpfiles.d/"
    rm -rf "$r/etc/tokend" "$r/etc/credstore" "$r/etc/credstore.encrypted" "$r/var/lib/tokend"
    printf '[Unit]\nDescription=tokend smoke test\nWants=sysinit.target\nAfter=sysinit.target\n' \
        >"$r/etc/systemd/system/tokend-smoke.target"
    mkdir -p "$r/oldroot"
    cd "$r"
    pivot_root . oldroot
    umount -l /oldroot
    # A container manager's job: credentials are mounted in a child namespace
    # and must propagate back.
    mount --make-rshared /
    exec env -i container=tokend-smoke /lib/systemd/systemd --system --unit=tokend-smoke.target
fi

# --- outer ----------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "smoke-test: must run as root" >&2; exit 2; }
if [ -d /run/systemd/system ]; then
    echo "smoke-test: systemd is PID 1 here; install the units for real instead" >&2
    exit 2
fi
for tool in unshare nsenter setpriv; do
    command -v "$tool" >/dev/null || { echo "smoke-test: $tool missing (apt-get install util-linux)" >&2; exit 2; }
done
[ -x /lib/systemd/systemd ] || { echo "smoke-test: /lib/systemd/systemd missing (apt-get install systemd)" >&2; exit 2; }

bindir="${1:-}"
if [ -z "$bindir" ]; then
    for d in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release" "$CARGO_TARGET_DIR/debug"} \
        "$repo/target/release" "$repo/target/debug"; do
        if [ -x "$d/tokend" ] && [ -x "$d/tokenctl" ]; then bindir="$d"; break; fi
    done
fi
[ -n "$bindir" ] && [ -x "$bindir/tokend" ] && [ -x "$bindir/tokenctl" ] || {
    echo "smoke-test: no tokend/tokenctl in '${bindir}' (cargo build, or pass BINDIR)" >&2
    exit 2
}
bindir="$(cd "$bindir" && pwd)"

cg2="$(findmnt -n -t cgroup2 -o TARGET | head -n1)"
[ -n "$cg2" ] || { echo "smoke-test: no cgroup2 mount" >&2; exit 2; }

tmp="$(mktemp -d /tmp/tokend-smoke.XXXXXX)"
mkdir -p "$tmp/ns" "$tmp/bin"
cp "$bindir/tokend" "$bindir/tokenctl" "$tmp/bin/"
cg="$cg2/tokend-smoke-$$"
launcher="" pid1="" srv=""

cleanup() {
    set +e
    if [ -n "$pid1" ] && kill -0 "$pid1" 2>/dev/null; then
        nsenter -t "$pid1" -m -p -C -- systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 50); do kill -0 "$pid1" 2>/dev/null || break; sleep 0.2; done
    fi
    [ -n "$launcher" ] && kill -0 "$launcher" 2>/dev/null && kill -KILL "$launcher"
    [ -n "$srv" ] && kill "$srv" 2>/dev/null
    if [ -d "$cg" ]; then
        [ -e "$cg/cgroup.kill" ] && echo 1 >"$cg/cgroup.kill"
        sleep 0.5
        find "$cg" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
        rmdir "$cg" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir "$cg"
setsid bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec unshare --mount --pid --fork --cgroup --propagation private "$@"' \
    _ "$cg" "$here/smoke-test-systemd.sh" --inner "$tmp" "$tmp/bin" >"$tmp/boot.log" 2>&1 &
launcher=$!

for _ in $(seq 100); do
    pid1="$(pgrep -P "$launcher" -x systemd || true)"
    [ -z "$pid1" ] && pid1="$(pgrep -P "$(pgrep -P "$launcher" | head -n1)" -x systemd 2>/dev/null || true)"
    [ -n "$pid1" ] && break
    sleep 0.2
done
[ -n "$pid1" ] || { cat "$tmp/boot.log" >&2; echo "smoke-test: systemd did not start" >&2; exit 1; }

ns() { nsenter -t "$pid1" -m -p -C -- "$@"; }
as() { local u="$1"; shift; ns setpriv --reuid="$u" --regid="$u" --init-groups "$@"; }
state=""
for _ in $(seq 150); do
    state="$(ns systemctl is-system-running 2>/dev/null || true)"
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
done
echo "smoke-test: throwaway systemd (pid $pid1) is $state"

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...
    local what="$1"; shift
    if "$@" >"$tmp/out" 2>&1; then
        echo "ok:   $what"; passed=$((passed + 1))
    else
        echo "FAIL: $what"; sed 's/^/      /' "$tmp/out" | tail -n 15; failed=$((failed + 1))
    fi
}
equals() { [ "$1" = "$2" ] || { echo "got '$1', want '$2'"; return 1; }; }
log_has() { ns journalctl -u tokend.service -o cat --no-pager | tail -n "${2:-5}" | grep -q -- "$1"; }
main_pid() { ns systemctl show -p MainPID --value tokend.service; }
stop_all() { ns systemctl stop tokend.socket tokend.service >/dev/null 2>&1 || true; }

# --- boot: sysusers.d and tmpfiles.d applied --------------------------------------
check "user and group tokend exist (sysusers.d)" ns id tokend
check "/run/tokend is 0750 tokend:tokend (tmpfiles.d)" \
    equals "$(ns stat -c '%a %U %G' /run/tokend)" "750 tokend tokend"
ns useradd -m -G tokend alice
ns useradd -m bob

# --- A: the service alone ---------------------------------------------------------
# socket_group as docs/CONFIG.md suggests: the daemon chgrps its socket.
ns sh -c 'mkdir -p /etc/tokend && echo "socket_group = \"tokend\"" >/etc/tokend/config.toml'
check "tokend.service starts without the socket unit (socket_group set)" ns systemctl start tokend.service
check "socket is 0660 tokend:tokend" \
    equals "$(ns stat -c '%a %U %G' /run/tokend/tokend.sock)" "660 tokend tokend"
pid="$(main_pid)"
check "sandbox: seccomp, no_new_privs, no capabilities" \
    ns grep -qzP 'CapEff:\t0000000000000000\n[\s\S]*NoNewPrivs:\t1\nSeccomp:\t2' "/proc/$pid/status"
check "root can talk to it" ns tokenctl status
check "a member of group tokend can connect" as alice tokenctl --socket /run/tokend/tokend.sock status
check "a non-member cannot" bash -c '! nsenter -t '"$pid1"' -m -p -C -- setpriv --reuid=bob --regid=bob --init-groups tokenctl --socket /run/tokend/tokend.sock status'
check "root adds a credential" bash -c 'echo smoke-secret | nsenter -t '"$pid1"' -m -p -C -- tokenctl add bearer smoke'
check "... allows alice" ns tokenctl allow smoke --user alice
check "alice gets the token (SO_PEERCRED uid seen)" equals "$(as alice tokenctl --socket /run/tokend/tokend.sock token smoke)" "smoke-secret"
ns usermod -aG tokend bob
check "bob, in group tokend but not allowed, is refused" bash -c '! nsenter -t '"$pid1"' -m -p -C -- setpriv --reuid=bob --regid=bob --init-groups tokenctl --socket /run/tokend/tokend.sock token smoke'
check "systemctl reload keeps the same process" bash -c 'nsenter -t '"$pid1"' -m -p -C -- systemctl reload tokend.service && [ "$(nsenter -t '"$pid1"' -m -p -C -- systemctl show -p MainPID --value tokend.service)" = '"$pid"' ]'

# --- B: outbound HTTP(S) by host name ----------------------------------------------
if command -v python3 >/dev/null; then
    cat >"$tmp/tokensrv.py" <<'EOF'
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        b = json.dumps({"access_token": "smoke-at", "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
if len(sys.argv) > 2:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.timeout = 1
for _ in range(120): s.handle_request()
EOF
    token_server() { # token_server [CERT KEY]: starts it, sets $srv and $port
        : >"$tmp/port"
        python3 "$tmp/tokensrv.py" "$@" >"$tmp/port" 2>/dev/null &
        srv=$!
        for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
        port="$(cat "$tmp/port")"
    }
    ns sh -c 'printf cs >/root/client-secret'
    token_server
    check "client-credentials against http://localhost:$port (AF_INET, DNS)" \
        ns tokenctl add client-credentials cc --token-url "http://localhost:$port/token" --client-id smoke --client-secret-file /root/client-secret
    check "... and its token" equals "$(ns tokenctl token cc 2>&1)" "smoke-at"
    kill "$srv" 2>/dev/null || true
    srv=""
    if command -v openssl >/dev/null && ns test -x /usr/sbin/update-ca-certificates; then
        # A throwaway CA, trusted inside the throwaway root only.
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=tokend smoke CA" \
            -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout "$tmp/srv.key" -out "$tmp/srv.csr" 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$tmp/ext"
        openssl x509 -req -in "$tmp/srv.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
            -days 1 -extfile "$tmp/ext" -out "$tmp/srv.crt" 2>/dev/null
        ns sh -c 'cat >/usr/local/share/ca-certificates/tokend-smoke.crt' <"$tmp/ca.crt"
        ns update-ca-certificates >/dev/null 2>&1
        # tokend reads the trust store when it starts.
        ns systemctl restart tokend.service
        token_server "$tmp/srv.crt" "$tmp/srv.key"
        check "client-credentials against https://localhost:$port (TLS, system trust store)" \
            ns tokenctl add client-credentials tls --token-url "https://localhost:$port/token" --client-id smoke --client-secret-file /root/client-secret
        check "... and its token" equals "$(ns tokenctl token tls 2>&1)" "smoke-at"
        kill "$srv" 2>/dev/null || true
        srv=""
    else
        echo "skip: outbound HTTPS (no openssl or ca-certificates)"
    fi
else
    echo "skip: outbound HTTP(S) (no python3)"
fi

# --- C: socket activation --------------------------------------------------------------
ns systemctl stop tokend.service
check "the daemon removed its own socket on stop" bash -c '! nsenter -t '"$pid1"' -m -p -C -- test -e /run/tokend/tokend.sock'
check "tokend.socket starts" ns systemctl start tokend.socket
check "activated socket is 0660 tokend:tokend" \
    equals "$(ns stat -c '%a %U %G' /run/tokend/tokend.sock)" "660 tokend tokend"
check "a connection activates tokend.service" equals "$(as alice tokenctl --socket /run/tokend/tokend.sock token smoke)" "smoke-secret"
check "... which uses the socket systemd passed" log_has "using the socket passed by systemd" 10
ns systemctl stop tokend.service 2>/dev/null
check "the socket survives a service stop (RuntimeDirectoryPreserve=yes)" ns test -S /run/tokend/tokend.sock
check "and activates the service again" equals "$(as alice tokenctl --socket /run/tokend/tokend.sock token smoke)" "smoke-secret"
stop_all
check "stopping tokend.socket removes the socket" bash -c '! nsenter -t '"$pid1"' -m -p -C -- test -e /run/tokend/tokend.sock'

# --- D: the sealing key as a credential ---------------------------------------------------
ns install -m 0400 /var/lib/tokend/tokend.key /etc/credstore/tokend.key
check "start with /etc/credstore/tokend.key" ns systemctl start tokend.service
check "... the key comes from the systemd credential" log_has "key=systemd credential /run/credentials/tokend.service/tokend.key" 3
stop_all
ns rm /etc/credstore/tokend.key
ns systemd-creds encrypt --name=tokend.key /var/lib/tokend/tokend.key /etc/credstore.encrypted/tokend.key 2>/dev/null
ns mkdir -p /run/systemd/system/tokend.service.d
ns sh -c 'printf "[Service]\nLoadCredential=\nLoadCredentialEncrypted=tokend.key\n" >/run/systemd/system/tokend.service.d/encrypted.conf'
ns systemctl daemon-reload
check "start with an encrypted credential (LoadCredentialEncrypted=)" ns systemctl start tokend.service
check "... the key comes from the systemd credential" log_has "key=systemd credential /run/credentials/tokend.service/tokend.key" 3
check "... and still opens the store" equals "$(ns tokenctl token smoke)" "smoke-secret"
stop_all
ns rm -rf /run/systemd/system/tokend.service.d /etc/credstore.encrypted/tokend.key
ns systemctl daemon-reload
check "no credential: falls back to the key file" ns systemctl start tokend.service
check "... /var/lib/tokend/tokend.key" log_has "key=key file /var/lib/tokend/tokend.key" 3
stop_all

# --- E: user units ---------------------------------------------------------------------
if ns test -x /usr/bin/dbus-daemon && ns systemctl start dbus.service >/dev/null 2>&1; then
    uid="$(ns id -u alice)"
    check "alice's user manager starts" ns systemctl start "user@$uid.service"
    ua() { as alice env XDG_RUNTIME_DIR="/run/user/$uid" HOME=/home/alice "$@"; }
    check "user tokend.service starts" ua systemctl --user start tokend.service
    check "user socket is 0600 in a 0700 directory" equals \
        "$(ns stat -c '%a %U' "/run/user/$uid/tokend" "/run/user/$uid/tokend/tokend.sock" | tr '\n' ' ')" "700 alice 600 alice "
    check "alice adds a credential to her daemon" bash -c 'echo mine | nsenter -t '"$pid1"' -m -p -C -- setpriv --reuid=alice --regid=alice --init-groups env XDG_RUNTIME_DIR=/run/user/'"$uid"' HOME=/home/alice tokenctl add bearer mine'
    check "... and gets it back" equals "$(ua tokenctl token mine)" "mine"
    ua systemctl --user stop tokend.service
    check "user tokend.socket starts" ua systemctl --user start tokend.socket
    check "a connection activates the user service" equals "$(ua tokenctl token mine)" "mine"
    ua systemctl --user stop tokend.socket tokend.service >/dev/null 2>&1 || true
else
    echo "skip: user units (no dbus-daemon: apt-get install dbus)"
fi

if [ -n "${SMOKE_HOLD:-}" ]; then
    echo "smoke-test: holding for ${SMOKE_HOLD}s; look around with: nsenter -t $pid1 -m -p -C -- systemctl status"
    sleep "$SMOKE_HOLD"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
