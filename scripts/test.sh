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
# the on-host tools: Python scripts without .py that the roles install (Debian 12's python3, standard library only)
tools=(roles/app/files/opsbook-app roles/app/files/opsbook-app-build
       roles/backup/files/opsbook-backup roles/backup/files/opsbook-backup-receive roles/backup/files/opsbook-backup-store
       roles/common/files/opsbook-lock roles/fail2ban/files/opsbook-fail2ban-metrics)
step "lint: ruff"
ruff check src tests benchmarks molecule examples "${tools[@]}" plugins
step "lint: mypy"
mypy
# the on-host tools, strict as the package; --scripts-are-modules: each is checked as its own module, named after
# its file, instead of all as __main__
mypy --scripts-are-modules "${tools[@]}"
mypy plugins/filter  # opsbook's own Jinja filters (strict, as the package)
step "unit tests"
# two workers, a module's tests on one (they share module fixtures): 2 cores, and many tests wait on ansible-playbook
pytest -q -p no:cacheprovider -n 2 --dist loadfile tests/unit

[ "$tier" = fast ] && exit 0

# Safety net for an aborted run: tests and molecule stop their own hosts. In CI the machine is ours: stop the
# whole lab; on a developer's machine stop only the end-to-end tests' hosts (others may be in use).
cleanup() {
  if [ -n "${CI:-}" ]; then
    opsbook lab down >/dev/null 2>&1 || true
  else
    mapfile -t mine < <(opsbook lab status --json 2>/dev/null | python3 -c \
      'import json,sys; print("\n".join(h["name"] for h in json.load(sys.stdin)["hosts"] if h["name"].startswith(("e2e-", "node-", "lc1", "lc2", "lc3", "pa-", "dr-"))))' || true)
    [ ${#mine[@]} -gt 0 ] && [ -n "${mine[0]}" ] && opsbook lab down "${mine[@]}" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "lab tests: molecule scenarios and end-to-end (lab hosts)"
# two workers: lab hosts of different tests run side by side; a module (e2e) or class (one molecule scenario)
# stays on one worker, so tests that share lab hosts never run apart
pytest -ra -v -p no:cacheprovider --durations=25 -n 2 --dist loadscope tests/e2e tests/molecule
