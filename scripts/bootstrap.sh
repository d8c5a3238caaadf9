#!/usr/bin/env bash
# Create .venv (if needed) and install ClawTrace into it. Needs only python3 >= 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "ClawTrace needs Python >= 3.11; $("$PYTHON" --version 2>&1) found. Set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
if [ "$EXTRAS" = "test" ] && [ ! -x /usr/bin/chromium ]; then
  # The console's browser tests drive Debian's chromium through Playwright (executable_path);
  # Playwright's own browser download is not used.
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  if ! command -v apt-get >/dev/null; then
    echo "The console tests need Chromium at /usr/bin/chromium and there is no apt-get to install it: install it by hand" >&2
    exit 1
  fi
  APT_LOG="$(mktemp)"
  echo "Installing Debian's chromium for the console tests..." >&2
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >"$APT_LOG" 2>&1; then
    # A fresh machine may have no package lists yet: fetch them, then try once more.
    if ! { $SUDO apt-get update -q >>"$APT_LOG" 2>&1 &&
           $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>"$APT_LOG" 2>&1; }; then
      tail -n 20 "$APT_LOG" >&2
      echo "Could not install chromium with apt-get (log above): the console tests need /usr/bin/chromium" >&2
      exit 1
    fi
  fi
  rm -f "$APT_LOG"
fi
if [ "$EXTRAS" = "test" ]; then
  # tests/test_openclaw_e2e.py runs a real OpenClaw 2026.9.6 with its own Node 24 (docs/integrations.md).
  scripts/openclaw.sh
fi
