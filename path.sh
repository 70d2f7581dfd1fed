# Source me: activates the speechae environment (installing it when missing) and sets the
# variables every recipe needs.  Works from any directory.
SPEECHAE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export SPEECHAE_ROOT
_venv=${SPEECHAE_VENV:-$SPEECHAE_ROOT/.venv}
if [ ! -f "$_venv/.speechae_installed" ]; then
  "$SPEECHAE_ROOT/tools/install.sh" >&2
fi
# shellcheck disable=SC1091
source "$_venv/bin/activate"
unset _venv
export PYTHONPATH=$SPEECHAE_ROOT${PYTHONPATH:+:$PYTHONPATH}
# Bengali text must round-trip through every tool: force a UTF-8 locale and Python's UTF-8 mode.
export LC_ALL=C.UTF-8 LANG=C.UTF-8 PYTHONIOENCODING=utf-8 PYTHONUTF8=1
# One BLAS thread per process: data stages parallelise with --nj processes instead.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1
