#!/usr/bin/env bash
# Regenerates the committed seed corpora under fuzz/seeds/ (see FUZZING.md): Ember's own code
# writes packages, signed requests, protocol frames, Runtime API exchanges and request bodies
# (examples/write_seeds.rs), and the test functions' zip tool adds a package made by Python's
# zipfile. The output is deterministic; commit what changes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --manifest-path fuzz/Cargo.toml --example write_seeds
python3 tests/functions/make_zip.py fuzz/seeds/package_zip/make_zip-python.zip tests/functions/python
