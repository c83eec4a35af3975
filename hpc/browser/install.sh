#!/usr/bin/env bash
# Make a headless browser available for the tests that render the HTML report: installs
# Debian's `chromium` package (apt, non-interactive) when `chromium` is not on PATH, then prints
# the browser's path on stdout. Idempotent: a browser already installed is only located.
#
#   hpc/browser/install.sh          # prints e.g. /usr/bin/chromium
#
# Exit status 1, with one line on stderr, when it cannot be installed (not root, no apt, no
# package mirror reachable).
set -euo pipefail

say() { echo "hpc/browser: $*" >&2; }

if ! command -v chromium >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "chromium is not installed and there is no apt-get to install it with"
    exit 1
  fi
  if [[ $(id -u) -ne 0 ]]; then
    say "need root to apt-get install chromium"
    exit 1
  fi
  say "installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists of a fresh machine may be stale or absent: update once, only on failure.
  apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends \
         chromium >/dev/null; } \
    || { say "apt-get install chromium failed"; exit 1; }
  if ! command -v chromium >/dev/null 2>&1; then
    say "chromium was installed but is not on PATH"
    exit 1
  fi
fi
command -v chromium
