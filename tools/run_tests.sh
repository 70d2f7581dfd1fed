#!/usr/bin/env bash
# The test command: installs the environment when missing (tools/install.sh), then runs pytest.
# Extra arguments go to pytest, e.g. tools/run_tests.sh tests/data -x
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck disable=SC1091
source "$root/path.sh"
# Tests pick their own thread counts; path.sh's one-thread default is for data stages.
unset OMP_NUM_THREADS MKL_NUM_THREADS
exec python -m pytest -p no:cacheprovider "$@"
