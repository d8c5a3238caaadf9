#!/usr/bin/env bash
# The demo: a gateway on the embedded default plus 50 simulated agents.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/clawtrace demo "$@"
