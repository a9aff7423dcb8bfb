#!/usr/bin/env bash
# Run every check: setup (idempotent), ruff, mypy --strict, import-linter contracts, and all tests (unit, integration, real-QEMU vm).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k api
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-start --test-deps
echo "==> ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "==> mypy"
.venv/bin/mypy
echo "==> import contracts"
.venv/bin/lint-imports
echo "==> pytest"
.venv/bin/pytest -ra "${@:-tests}"
