#!/usr/bin/env bash
# Sets up a fresh Debian machine for openpcs: system packages, then a virtualenv in .venv with openpcs.
#   scripts/setup.sh          what `openpcs serve` and the README's quick start need: munge, MariaDB (for
#                             clusters' accounting), Slurm 24.11 (scripts/build-slurm.sh), openpcs with
#                             boto3 and the AWS CLI in .venv
#   scripts/setup.sh --test   plus what the tests need (PostgreSQL, pytest, moto, ruff)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

packages=()
# Every cluster's daemons authenticate with munge.
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || packages+=(munge)
# A cluster with accounting runs slurmdbd against a MariaDB server openpcs starts itself: the server's programs
# only (mariadbd, mariadb-install-db and the my_print_defaults it calls), without a system service.
command -v mariadb-install-db >/dev/null 2>&1 || packages+=(mariadb-server-core)
command -v my_print_defaults >/dev/null 2>&1 || packages+=(mariadb-client-core)
# The README's quick start talks to a cluster's Slurm REST API with curl.
command -v curl >/dev/null 2>&1 || packages+=(curl)
if [ "$want_test" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    packages+=(postgresql)
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "== installing system packages: ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
# Every thread of every node's daemons takes a PID: a LARGE cluster's 2,048 nodes with a job on all of them need
# more than the kernel's default pid_max of 32,768 (docs/slurm.md). Raised until the next boot.
if [ "$(cat /proc/sys/kernel/pid_max)" -lt 4194304 ]; then
    echo "== raising kernel.pid_max to 4194304 (was $(cat /proc/sys/kernel/pid_max))"
    echo 4194304 > /proc/sys/kernel/pid_max || echo "could not raise kernel.pid_max: clusters of more than about" \
        "1,000 nodes may fail to start threads. As root: sysctl -w kernel.pid_max=4194304" >&2
fi
# Every cluster is a real Slurm 24.11: built once per machine (about 4 minutes), then found by path.
scripts/build-slurm.sh

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "openpcs needs Python 3.11 or newer; $("$python" --version) found. Set PYTHON=/path/to/python3.11." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$python" -m venv .venv
fi
echo "== installing openpcs into .venv"
.venv/bin/python -m pip install -q --upgrade pip
if [ "$want_test" = 1 ]; then
    .venv/bin/python -m pip install -q -e '.[clients,test]'
else
    .venv/bin/python -m pip install -q -e '.[clients]'
fi
