#!/usr/bin/env bash
# Builds the tokend Debian package: release binaries, completions and man
# pages, then `cargo deb`. Prints the path of the .deb on its last line.
#
#   packaging/build-deb.sh
#
# Needs a Rust toolchain, gzip, and dpkg (dpkg-shlibdeps) for the
# dependencies; installs cargo-deb with `cargo install` if it is missing.
# Honours CARGO_TARGET_DIR. The package is `tokend` (metadata in
# daemon/Cargo.toml): /usr/bin/tokend and /usr/bin/tokenctl, the systemd
# units, sysusers.d/tmpfiles.d entries, completions, man pages and docs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb" >&2
    cargo install cargo-deb --locked
fi

cargo build --release --workspace --locked

# cargo-deb resolves asset paths starting with target/release/ to the real
# target dir, so the generated assets go there too.
target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[ -n "$target_dir" ] || { echo "build-deb: cannot find the cargo target dir" >&2; exit 1; }
assets="$target_dir/release/assets"
rm -rf "$assets"
"$target_dir/release/tokend-assets" "$assets"
# Debian policy wants man pages gzipped; cargo-deb only compresses assets it
# did not find under target/release/. -n: no name or time stamp inside, so
# the same pages give the same bytes.
gzip -9n "$assets"/man/*.[18]

# --strip: the release profile keeps line tables (for backtraces while
# developing); the packaged binaries go without, at a fraction of the size.
out="$(cargo deb -p tokend --no-build --locked --strip)"
deb="$(printf '%s\n' "$out" | tail -n 1)"
[ -f "$deb" ] || { echo "build-deb: cargo deb did not report a .deb: $out" >&2; exit 1; }
echo "$deb"
