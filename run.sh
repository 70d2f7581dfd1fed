#!/usr/bin/env bash
# The default recipe: the tiny synthetic English+Bengali corpus in egs/mini/ae.
# All arguments are forwarded, e.g. ./run.sh --stage 0 --stop-stage 3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/egs/mini/ae"
exec ./run.sh "$@"
