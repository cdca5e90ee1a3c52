#!/usr/bin/env bash
# Installs the AWS SDK for JavaScript v3 (package-lock.json, exactly) into tests/e2e/js/node_modules
# for the end-to-end tests, with `npm ci`. Does nothing when that lock is installed already, so
# reruns need neither the network nor time; npm's cache serves a reinstall when it can.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.ember-installed-lock.json
if cmp -s package-lock.json "$stamp" 2>/dev/null; then
  exit 0
fi
npm ci --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null
cp package-lock.json "$stamp"
