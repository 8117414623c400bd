#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up, then the fast tier (lint, unit), then the lab tier
# (molecule scenarios per role, end-to-end tests on lab hosts). Run as root on a Debian 12 machine.
#   scripts/test.sh            everything
#   scripts/test.sh fast       lint + unit only
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}

scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
export PYTHONUNBUFFERED=1

step() { printf '\n=== %s\n' "$*"; }

step "lint: yamllint"
yamllint --strict .
step "lint: ansible-lint (production profile)"
ansible-lint --profile production -q
step "lint: ruff"
ruff check src tests scripts
step "lint: mypy"
mypy
step "unit tests"
pytest -q tests/unit

[ "$tier" = fast ] && exit 0

cleanup() { opsbook lab down >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "lab tests: molecule scenarios and end-to-end (lab hosts)"
# two workers: lab hosts of different tests run side by side; tests sharing lab hosts share a worker
pytest -ra -v -p no:cacheprovider -n 2 --dist loadgroup tests/e2e tests/molecule
