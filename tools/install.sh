#!/usr/bin/env bash
# Create (or repair) the project's virtual environment in $SPEECHAE_VENV (default: <repo>/.venv).
#
# torch is installed first and on its own, from $SPEECHAE_TORCH_SPEC, because anything that
# depends on torch would otherwise pull the default (multi-GB CUDA) build. Cluster users pick
# their build by overriding the spec, e.g.
#   SPEECHAE_TORCH_SPEC="torch==2.5.1" SPEECHAE_TORCH_INDEX=https://download.pytorch.org/whl/cu124 tools/install.sh
# k2 and kaldifeat are optional accelerators; install them yourself where wheels exist for your
# torch/CUDA build and speechae picks them up automatically.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SPEECHAE_VENV:-$root/.venv}
python=${SPEECHAE_PYTHON:-python3}
torch_spec=${SPEECHAE_TORCH_SPEC:-torch==2.13.0}
torch_index=${SPEECHAE_TORCH_INDEX:-}

echo "[install] venv=$venv torch='$torch_spec'"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip_log=$venv/install.log
pip() {
  # pip's chatter goes to $pip_log; on failure its tail is shown.
  if ! "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" >>"$pip_log" 2>&1; then
    grep -v '^WARNING: Location' "$pip_log" | tail -30 >&2
    echo "[install] pip $* failed; full log: $pip_log" >&2
    exit 1
  fi
}
pip install --upgrade pip
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "[install] installing $torch_spec"
  if [ -n "$torch_index" ]; then
    pip install "$torch_spec" --index-url "$torch_index"
  else
    pip install "$torch_spec"
  fi
fi
# Everything else; torch is already satisfied so nothing replaces it.
echo "[install] installing speechae and its dependencies"
# [audio]: waveform metrics and pretrained judges (speechae.eval.waveform); resemblyzer's torch
# requirement is met by the torch above, and nothing else in it depends on torch.
pip install -e "$root[test,audio]"
"$venv/bin/python" -c "import torch, lhotse, sentencepiece, espeakng_loader, speechae" \
  || { echo "[install] the environment in $venv is incomplete" >&2; exit 1; }
touch "$venv/.speechae_installed"
"$venv/bin/python" - <<'PY'
import importlib.util, torch
from speechae.eval.waveform import JUDGE_PACKAGES, judge_availability
opt = {m: importlib.util.find_spec(m) is not None for m in ("k2", "kaldifeat")}
print(f"[install] torch {torch.__version__}; optional accelerators: "
      + ", ".join(f"{k}={'yes' if v else 'no (pure PyTorch/Lhotse fallback)'}" for k, v in opt.items()))
metrics = {m: importlib.util.find_spec(m) is not None for m in ("pystoi", "pesq")}
judges = judge_availability(try_import=True)  # imports: a broken install shows as 'no'
print("[install] waveform metrics: "
      + ", ".join(f"{k}={'yes' if v else 'no (skipped)'}" for k, v in metrics.items())
      + "; judges: " + ", ".join(f"{k} ({JUDGE_PACKAGES[k]})={'yes' if v else 'no (skipped)'}"
                                 for k, v in judges.items()))
PY
