#!/usr/bin/env bash
# Chromium for the browser tests (Playwright drives the system browser; `playwright install` cannot download here).
# Installed with apt when root; otherwise the browser tests are skipped, loudly.
set -uo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "WARNING: no chromium and not root to install it: the browser tests will be SKIPPED" >&2
  exit 0
fi
echo "installing chromium (apt) for the browser tests..."
(apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }) \
  || echo "WARNING: chromium could not be installed: the browser tests will be SKIPPED" >&2
