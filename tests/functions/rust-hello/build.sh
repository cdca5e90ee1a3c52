#!/usr/bin/env bash
# Builds rust-hello (release) and packages it as a Lambda zip: `bootstrap` at the zip's root,
# mode 0755. Usage: build.sh [OUT.zip]  (default: $TARGET_DIR/rust-hello.zip)
# The target dir is $CARGO_TARGET_DIR, else <repo>/target/functions. Prints the zip's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target_dir="${CARGO_TARGET_DIR:-$here/../../../target/functions}"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
out="${1:-$target_dir/rust-hello.zip}"

cargo build --release --locked --quiet --manifest-path "$here/Cargo.toml" --target-dir "$target_dir"

python3 "$here/../make_zip.py" "$out" "$target_dir/release/bootstrap"
echo "$out"
