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
.venv/bin/python -m pytest -p no:cacheprovider -ra --junitxml=test-artifacts/junit.xml "$@"
