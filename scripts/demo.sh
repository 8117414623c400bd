#!/usr/bin/env bash
# The main job on the lab, from a fresh Debian 12 machine, as root: set up, then `opsbook demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/opsbook demo "$@"
