#!/usr/bin/env bash
# Builds the pandas benchmark function: app.py with numpy and pandas installed from PyPI (binary
# wheels for CPython 3.11 on manylinux x86_64) at the zip's root, as a Lambda zip.
# Usage: build.sh [OUT.zip]  (default: $TARGET_DIR/pandas.zip; cached: built once)
# The target dir is $CARGO_TARGET_DIR, else <repo>/target/functions. Prints the zip's path.
# PIP is the pip to run (default: python3 -m pip).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target_dir="${CARGO_TARGET_DIR:-$here/../../../target/functions}"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
out="${1:-$target_dir/pandas.zip}"
if [ -s "$out" ] && [ "$out" -nt "$here/app.py" ] && [ "$out" -nt "$0" ]; then
    echo "$out"
    exit 0
fi
site="$target_dir/pandas-site"
rm -rf "$site"
${PIP:-python3 -m pip} install --quiet --target "$site" --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    'numpy==2.2.6' 'pandas==2.2.3' >&2
cp "$here/app.py" "$site/app.py"
python3 "$here/../make_zip.py" "$out" "$site" >&2
echo "$out"
