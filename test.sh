#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is
# missing, then runs every test of the project.
#
#   ./test.sh               everything: cargo test --workspace, the Python
#                           client's tests, the Windows build under Wine
#   ./test.sh ARGS...       cargo test --workspace --locked ARGS... only
#                           (e.g. ./test.sh --test docs)
#
# What the tests need besides the Rust toolchain, and the Debian/Ubuntu
# packages that give it:
#   PostgreSQL's server binaries (the fleet tests start their own cluster) postgresql
#   node and npm (the OAuth2 test server, tests/oidc)                      nodejs npm
#   curl, git (the end-to-end tests call them)                             curl git ca-certificates
#   python3 (the Python client), requests and httpx (optional)             python3 python3-requests python3-httpx
#   Prometheus's Python parser (the metrics tests read with it)            python3-prometheus-client
#   wine and mingw (tokend.exe and tokenctl.exe under Wine)                wine wine64 gcc-mingw-w64-x86-64
#   the Rust target x86_64-pc-windows-gnu                                  rustup target add
# On Debian or Ubuntu the missing ones are installed with apt-get (through
# sudo when not root); elsewhere, or with TOKEND_TEST_NO_INSTALL=1, the
# script names them and stops. Then `npm ci` in tests/oidc when its
# node_modules is missing or older than package-lock.json.
#
# Ends with a summary; exit status 0 only if every part passed.
set -uo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"

say() { printf '\n=== %s ===\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 2; }

# ---- what is missing ---------------------------------------------------------
say "what the tests need"
packages=()
need() { packages+=("$@"); } # need PACKAGE...: to install
command -v cargo >/dev/null || die "cargo is not on PATH: install the Rust toolchain first (https://rustup.rs)"
command -v cc >/dev/null || need build-essential
command -v curl >/dev/null || need curl ca-certificates
command -v git >/dev/null || need git
have_initdb() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null
}
have_initdb || need postgresql
command -v node >/dev/null || need nodejs
command -v npm >/dev/null || need npm
command -v python3 >/dev/null || need python3 python3-requests python3-httpx python3-prometheus-client
command -v wine >/dev/null && command -v wineserver >/dev/null || need wine wine64
command -v x86_64-w64-mingw32-gcc >/dev/null || need gcc-mingw-w64-x86-64
# requests and httpx: only the Debian python3 takes them from apt.
python_libs() { python3 -c 'import requests, httpx' 2>/dev/null; }
if command -v python3 >/dev/null && ! python_libs &&
    [ "$(command -v python3)" = /usr/bin/python3 ]; then
    need python3-requests python3-httpx
fi
prometheus_parser() { python3 -c 'import prometheus_client.parser' 2>/dev/null; }
if command -v python3 >/dev/null && ! prometheus_parser &&
    [ "$(command -v python3)" = /usr/bin/python3 ]; then
    need python3-prometheus-client
fi

if [ "${#packages[@]}" -gt 0 ]; then
    echo "missing: ${packages[*]}"
    if [ -n "${TOKEND_TEST_NO_INSTALL:-}" ] || ! command -v apt-get >/dev/null; then
        die "install these (Debian/Ubuntu package names; on other systems their equivalents: PostgreSQL's server binaries, Node.js and npm, Wine with 64-bit support, the MinGW-w64 cross compiler for x86_64), then run ./test.sh again"
    fi
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null; then
        sudo=(sudo)
        echo "installing with sudo (apt-get)"
    else
        die "not root and no sudo: as root, run apt-get install ${packages[*]}"
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${packages[@]}" >/dev/null ||
        die "apt-get install ${packages[*]} failed"
    have_initdb || die "postgresql is installed but no initdb was found in /usr/lib/postgresql/*/bin"
else
    echo "all there"
fi
if ! prometheus_parser; then
    # Not a Debian python3 (or its package is missing): pip, into it.
    python3 -m pip install --quiet --disable-pip-version-check prometheus_client ||
        die "the metrics tests need Python's prometheus_client: python3 -m pip install prometheus_client (or apt-get install python3-prometheus-client)"
fi
if command -v python3 >/dev/null && ! python_libs; then
    echo "note: $(command -v python3) lacks requests or httpx: the Python client's BearerAuth tests will be skipped" \
        "(python3 -m pip install requests httpx)"
fi

# The Windows target for the Wine run.
if command -v rustup >/dev/null; then
    rustup target list --installed | grep -qx x86_64-pc-windows-gnu ||
        rustup target add x86_64-pc-windows-gnu || die "rustup target add x86_64-pc-windows-gnu failed"
elif [ ! -d "$(rustc --print sysroot)/lib/rustlib/x86_64-pc-windows-gnu" ]; then
    die "the Rust target x86_64-pc-windows-gnu is missing and there is no rustup to add it"
fi

# The OAuth2 test server's npm packages (the tests install them too, but
# never refresh a stale copy).
oidc=tests/oidc
if [ ! -f "$oidc/node_modules/.package-lock.json" ] ||
    [ "$oidc/package-lock.json" -nt "$oidc/node_modules/.package-lock.json" ]; then
    echo "npm ci in $oidc"
    (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $oidc failed"
fi

# The access tests act as a second local user, tokend-e2e, and only as
# root (they need to switch uid); without root they skip themselves.
if [ "$(id -u)" -eq 0 ]; then
    if ! id tokend-e2e >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin tokend-e2e ||
            die "useradd tokend-e2e failed"
        echo "created the user tokend-e2e for the access tests"
    fi
else
    echo "note: not root: the access tests that act as a second user (tokend-e2e) skip themselves"
fi

# ---- the tests ---------------------------------------------------------------
results=()
failed=0
part() { # part NAME COMMAND...: runs it, records the outcome
    local name="$1"
    shift
    say "$name"
    if "$@"; then
        results+=("passed      $name")
    else
        results+=("FAILED      $name")
        failed=$((failed + 1))
    fi
}

if [ "$#" -gt 0 ]; then
    part "cargo test --workspace --locked $*" cargo test --workspace --locked "$@"
    results+=("not run     the Python client's tests, the Wine run (arguments were given: cargo test only)")
else
    part "cargo test --workspace --locked" cargo test --workspace --locked
    python_tests() {
        cargo build --workspace --bins --locked &&
            python3 client/python/run_tests.py --require-daemon
    }
    part "the Python client against the real daemon (client/python)" python_tests
    part "tokend.exe and tokenctl.exe under Wine (packaging/windows/test-under-wine.sh)" \
        bash packaging/windows/test-under-wine.sh
fi

say "summary"
printf '%s\n' "${results[@]}"
[ "$failed" -eq 0 ]
