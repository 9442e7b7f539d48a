#!/usr/bin/env bash
# Builds tokend.exe and tokenctl.exe for 64-bit Windows and zips them with
# a short README.txt: target/windows/tokend-windows-x86_64.zip.
#
# Usage: bash packaging/windows/build-zip.sh [--debug]
#   Needs mingw (Debian: gcc-mingw-w64-x86-64) and the Rust target
#   x86_64-pc-windows-gnu (rustup target add x86_64-pc-windows-gnu).
#   A release build by default (several minutes from clean on 2 cores);
#   --debug zips the debug build instead, for trying the script. Prints
#   the zip's path on its last line.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
profile=release
[ "${1:-}" = --debug ] && profile=debug

flags=(--locked --target x86_64-pc-windows-gnu -p tokend -p tokend-client --manifest-path "$root/Cargo.toml")
[ "$profile" = release ] && flags+=(--release)
cargo build "${flags[@]}" >&2
bin="$target_dir/x86_64-pc-windows-gnu/$profile"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"

name=tokend-windows-x86_64
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$name"
cp "$bin/tokend.exe" "$bin/tokenctl.exe" "$stage/$name/"
[ "$profile" = release ] && x86_64-w64-mingw32-strip "$stage/$name/"*.exe
# Windows' Notepad reads either line ending; CRLF for older ones.
sed "s/@VERSION@/$version/; s/\$/\r/" "$here/README.txt" >"$stage/$name/README.txt"

out="$target_dir/windows"
mkdir -p "$out"
rm -f "$out/$name.zip"
(cd "$stage" && python3 -m zipfile -c "$out/$name.zip" "$name")
echo "$out/$name.zip"
