#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need,
# then lint, type check, and every test against real components.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
scripts/services.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy
mkdir -p test-artifacts
# Three processes, a test file each at a time (module-scoped gateways stay with their tests).
.venv/bin/python -m pytest -p no:cacheprovider -ra -n 3 --dist loadfile --junitxml=test-artifacts/junit.xml "$@"
