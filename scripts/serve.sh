#!/usr/bin/env bash
# Sets up openpcs on this machine (first run only does real work) and starts it on its embedded default:
# SQLite in the data dir, API on http://127.0.0.1:8080. Arguments go to `openpcs serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/openpcs serve "$@"
