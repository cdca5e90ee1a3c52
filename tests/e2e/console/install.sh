#!/usr/bin/env bash
# Installs, with `npm ci` of each package-lock.json, what the web console's tests need:
# playwright-core into tests/e2e/console/node_modules (the browser is Debian's chromium, which
# scripts/test installs), and the console's build tools into console/node_modules (for the check
# that the committed bundle is the build of console/src). Does nothing for a lock already
# installed, so reruns need neither the network nor time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for dir in "$here" "$here/../../../console"; do
  cd "$dir"
  stamp=node_modules/.ember-installed-lock.json
  if cmp -s package-lock.json "$stamp" 2>/dev/null; then
    continue
  fi
  npm ci --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null
  cp package-lock.json "$stamp"
done
