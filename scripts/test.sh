#!/usr/bin/env bash
# Sets up everything the tests need and runs them: lint, then pytest against real servers
# (openpcs, PostgreSQL) driven by unmodified boto3 and the AWS CLI. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$PATH"  # the AWS CLI the tests run is the one in .venv
echo "== ruff"
ruff check src tests bench
echo "== pytest"
exec python -m pytest -q -p no:cacheprovider "$@"
