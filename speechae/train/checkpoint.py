"""Checkpoints: atomic, self-describing, loadable with ``torch.load(weights_only=True)``.

A checkpoint (``<exp>/checkpoints/ckpt-<step:08d>.pt``) is a dict of tensors and plain
containers only:

=================  ==========================================================================
key                content
=================  ==========================================================================
``version``        format version (int)
``config``         the resolved experiment config as a plain dict (rebuilds the model alone)
``step``           optimiser updates done
``epoch``          sampler epoch
``model``          model state dict
``model_avg``      running average of the model weights (see :func:`update_average`) or None
``avg_step``       step at which ``model_avg`` was last updated
``losses``         state dict of the loss composer (objective heads)
``optimizer``      optimiser state dict;  ``scheduler``: scheduler state dict
``scaler``         GradScaler state dict (fp16) or None
``sampler``        Lhotse sampler ``state_dict()`` (plain dicts), rank 0's
``rng``            python / numpy / torch (+ cuda) RNG states, all as tensors
``counters``       plain dict: nonfinite steps, audio seconds seen, ...
=================  ==========================================================================

Writes go to a temporary sibling and are moved in place with :func:`os.replace`, so a crash
never leaves a truncated checkpoint that a resume would trust.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from speechae.utils.io import atomic_path

CHECKPOINT_VERSION = 1
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    """Path of the checkpoint written after ``step`` updates."""
    return Path(ckpt_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint in ``ckpt_dir``, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` atomically (temp file + os.replace)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return path


def prune_checkpoints(ckpt_dir: str | Path, keep_last_k: int) -> list[Path]:
    """Delete all but the ``keep_last_k`` newest checkpoints (0 keeps all); returns deleted."""
    if keep_last_k <= 0:
        return []
    found = list_checkpoints(ckpt_dir)
    removed = []
    for _, p in found[:-keep_last_k]:
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file (or the latest one in a directory) with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        inner = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        latest = latest_checkpoint(inner)
        if latest is None:
            raise FileNotFoundError(f"{path}: no ckpt-*.pt checkpoint found")
        path = latest
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return torch.load(path, map_location=map_location, weights_only=True)


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors (weights_only-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_meta": [int(py_version), py_gauss],
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "numpy_meta": [str(np_name), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, gauss = state["python_meta"]
    random.setstate((int(version), tuple(int(x) for x in state["python"].tolist()), gauss))
    name, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((name, state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


# ----------------------------------------------------------------------------- averaging


@torch.no_grad()
def update_average(avg: Mapping[str, torch.Tensor], model: nn.Module, step: int, period: int) -> None:
    """icefall-style running average of every weight since step 0, updated every ``period``.

    ``avg = avg * (1 - period/step) + cur * (period/step)``; integer buffers (counters) are
    copied.  At step s the result is the mean of the weights at steps period, 2*period, ..., s.
    """
    w_cur = min(1.0, period / max(step, 1))
    for name, cur in model.state_dict().items():
        dst = avg[name]
        if dst.is_floating_point():
            dst.mul_(1.0 - w_cur).add_(cur.detach().to(dst.dtype), alpha=w_cur)
        else:
            dst.copy_(cur)


def init_average(model: nn.Module) -> dict[str, torch.Tensor]:
    """A float64 copy of the model's state dict on CPU (keeps long averages exact enough)."""
    return {k: (v.detach().double() if v.is_floating_point() else v.detach().clone()).cpu()
            for k, v in model.state_dict().items()}


def cast_like(avg: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``avg`` with each tensor converted to the dtype of the same key in ``reference``."""
    return {k: v.to(reference[k].dtype) for k, v in avg.items()}


def average_state_dicts(states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of float tensors (integer tensors: taken from the last state)."""
    if not states:
        raise ValueError("nothing to average")
    out = {}
    for k, v in states[-1].items():
        if v.is_floating_point():
            acc = torch.zeros_like(v, dtype=torch.float64)
            for s in states:
                acc += s[k].double()
            out[k] = (acc / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def average_checkpoints(paths: list[str | Path], use_averaged: bool = False) -> dict[str, Any]:
    """Average the model weights of ``paths`` (all from one experiment).

    ``use_averaged=False``: plain mean of the ``model`` weights of every checkpoint.
    ``use_averaged=True`` (icefall ``--use-averaged-model``): with the running averages
    ``A_s`` stored at the first and last checkpoints (steps s0 < s1), the mean of the weights
    over (s0, s1] is ``(A_s1 * s1 - A_s0 * s0) / (s1 - s0)``; needs two or more paths.

    Returns a checkpoint-like dict with ``config``, ``step``, ``model`` and ``averaged_from``.
    """
    ckpts = [load_checkpoint(p) for p in paths]
    ckpts.sort(key=lambda c: c["step"])
    last = ckpts[-1]
    if use_averaged:
        first = ckpts[0]
        if len(ckpts) < 2 or first.get("model_avg") is None or last.get("model_avg") is None:
            raise ValueError("use_averaged needs >= 2 checkpoints that hold model_avg")
        s0, s1 = first["avg_step"], last["avg_step"]
        if s1 <= s0:
            raise ValueError(f"averaged-model steps must increase, got {s0} and {s1}")
        model = {}
        for k, v in last["model"].items():
            if v.is_floating_point():
                a0, a1 = first["model_avg"][k].double(), last["model_avg"][k].double()
                model[k] = ((a1 * s1 - a0 * s0) / (s1 - s0)).to(v.dtype)
            else:
                model[k] = v.clone()
    else:
        model = average_state_dicts([c["model"] for c in ckpts])
    return {"version": CHECKPOINT_VERSION, "config": last["config"], "step": last["step"], "model": model,
            "model_avg": None, "averaged_from": [str(p) for p in paths]}


# ----------------------------------------------------------------------------- evaluation


def load_model_from_checkpoint(path: str | Path, averaged: bool = True,
                               map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (file, checkpoints dir or experiment dir) in eval mode.

    Uses only the checkpoint: the model is built from its stored ``config['model']``; weights
    are the running average when ``averaged`` and one is stored, else the raw weights.
    Returns ``(model, config_dict)`` where ``config_dict`` is the full resolved experiment config.
    """
    from speechae.models import build_model  # local: keeps checkpoint utilities import-light

    ckpt = load_checkpoint(path, map_location=map_location)
    config = ckpt["config"]
    model = build_model(config["model"])
    weights = ckpt.get("model_avg") if averaged and ckpt.get("model_avg") is not None else ckpt["model"]
    model.load_state_dict(cast_like(weights, model.state_dict()))
    model.set_batch_count(float(ckpt.get("step", 0)))
    model.to(map_location).eval()
    return model, config
