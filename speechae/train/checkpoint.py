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
``sha256``         checksum of everything above (see :func:`content_digest`)
=================  ==========================================================================

Writes go to a temporary sibling, are flushed to disk and moved in place with
:func:`os.replace`, so a crash never leaves a truncated checkpoint under the final name.  The
``sha256`` entry catches what that cannot: a file damaged later (a flipped bit, a truncated
copy).  :func:`load_checkpoint` verifies it; :func:`find_resumable` skips a bad newest
checkpoint for the previous good one and moves the bad file aside (``<name>.corrupt``).
Checkpoints written before the checksum existed load unverified.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from speechae.utils.io import atomic_path, temp_file_pattern

log = logging.getLogger("speechae.train")

CHECKPOINT_VERSION = 1
DIGEST_KEY = "sha256"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
_TMP_RE = temp_file_pattern(r"ckpt-\d+", ".pt")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or fails its checksum; ``path`` names it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions); names the path.
    ``errno`` is the cause's (ENOSPC for a full disk) when known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


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


# ----------------------------------------------------------------------------- integrity


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` (tensors, mappings, sequences, scalars) with its types and structure."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data)
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, (set, frozenset)):  # iteration order varies with PYTHONHASHSEED
        h.update(f"E{sorted(repr(v) for v in obj)!r}".encode())
    else:  # None, bool, int, float, str, bytes: repr is exact and type-specific
        h.update(f"S{type(obj).__name__}:{obj!r};".encode())


def content_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over every entry of ``state`` except ``sha256`` itself: keys, structure, dtypes,
    shapes and tensor bytes.  Hashing the loaded content (not the file) keeps the checksum
    inside the one file and independent of torch's zip layout."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tensor_bytes(obj: Any) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write_failure(path: Path, error: BaseException, needed: int) -> CheckpointWriteError:
    """A message naming ``path`` and the cause.  torch's zip writer reports a full disk as
    ``unexpected pos 20875200 vs 20875088`` without an errno, so free space is compared with
    the checkpoint's size as well."""
    code = getattr(error, "errno", None)
    try:
        free: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    sizes = f" (the checkpoint needs about {needed / 2**20:.0f} MiB" + \
        (f", {free / 2**20:.0f} MiB are free there)" if free is not None else ")")
    if code is None and ("No space left" in str(error) or (free is not None and free < 1.1 * needed)):
        code = errno.ENOSPC
    if code in _DISK_FULL:
        reason = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        return CheckpointWriteError(f"{path}: could not write the checkpoint: {reason}{sizes}", code)
    text = str(error).strip()
    detail = error.strerror if isinstance(error, OSError) and error.strerror else \
        (text.splitlines()[0] if text else type(error).__name__)
    return CheckpointWriteError(f"{path}: could not write the checkpoint: {detail}", code)


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` plus its ``sha256`` atomically (temp file, fsync, os.replace).

    Raises :class:`CheckpointWriteError` naming ``path`` (and saying "no space left on device"
    when that is the cause); the temporary file is removed and an older checkpoint of that name
    is left as it was.
    """
    path = Path(path)
    state = {k: v for k, v in state.items() if k != DIGEST_KEY}
    state[DIGEST_KEY] = content_digest(state)
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
            _fsync(tmp)
    except (OSError, RuntimeError) as e:
        raise _write_failure(path, e, _tensor_bytes(state)) from e
    return path


def remove_stale_temp_files(ckpt_dir: str | Path) -> list[Path]:
    """Delete temporary checkpoint files left by killed writers (``.ckpt-<step>.tmp*.pt``).

    Call only while holding the experiment lock: a live writer's file matches too."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    removed = []
    for p in ckpt_dir.iterdir():
        if _TMP_RE.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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


def _read_failure(error: BaseException) -> str:
    """What went wrong, in words: torch's own message advises ``weights_only=False``, which is
    the wrong advice for a damaged file."""
    text = str(error).strip()
    if isinstance(error, EOFError):
        return "the file is cut short"
    if "weights only load failed" in text.lower():
        return "damaged or not a checkpoint (the safe unpickler rejected its contents)"
    first = text.splitlines()[0].split(". ")[0][:200] if text else type(error).__name__
    return f"damaged or not a checkpoint ({first})"


def _to_device(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, device)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def read_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint file (``weights_only=True``) and verify its checksum.

    Raises FileNotFoundError when it does not exist and :class:`CheckpointError` (naming the
    file) when it is empty, truncated, not a checkpoint or fails its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "the file is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - zip, pickle and torch errors all mean "damaged"
        raise CheckpointError(path, _read_failure(e)) from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"not a checkpoint (holds a {type(state).__name__}, not a dict)")
    stored = state.get(DIGEST_KEY)
    if stored is not None and stored != content_digest(state):
        raise CheckpointError(path, "checksum mismatch: the file was damaged after it was written")
    device = torch.device(map_location) if not isinstance(map_location, torch.device) else map_location
    return state if device.type == "cpu" else _to_device(state, device)


def find_resumable(ckpt_dir: str | Path, quarantine: bool = False,
                   map_location: str | torch.device = "cpu") -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint of ``ckpt_dir`` that loads and passes its checksum, and its state.

    Bad ones are skipped with a warning naming them; with ``quarantine`` (the training run that
    owns the directory) each is renamed to ``<name>.corrupt`` so that it is looked at once and
    kept for inspection.  Returns ``(None, None)`` when no valid checkpoint exists.
    """
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, read_checkpoint_file(path, map_location)
        except CheckpointError as e:
            if quarantine:
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                log.warning("%s; moved aside to %s, trying the previous checkpoint", e, aside.name)
            else:
                log.warning("%s; trying the previous checkpoint", e)
    return None, None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file, or the newest valid one of a directory (experiment or its
    ``checkpoints/``), with ``weights_only=True`` and a verified checksum."""
    path = Path(path)
    if path.is_dir():
        inner = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found, state = find_resumable(inner, map_location=map_location)
        if found is None:
            what = "valid ckpt-*.pt checkpoint" if list_checkpoints(inner) else "ckpt-*.pt checkpoint"
            raise FileNotFoundError(f"{path}: no {what} found")
        return state
    return read_checkpoint_file(path, map_location)


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
    # copy=True: .double() of a float64 tensor is the tensor itself, and the average would then
    # alias (and be overwritten by) the live parameter
    return {k: (v.detach().to("cpu", torch.float64, copy=True) if v.is_floating_point() else v.detach().clone().cpu())
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

    from speechae.train.config import import_extensions

    ckpt = load_checkpoint(path, map_location=map_location)
    config = ckpt["config"]
    import_extensions(config.get("imports"))
    if config.get("task") == "uniwav":  # its own model class, with the SpeechAE evaluation interface
        from speechae.models.uniwav import build_uniwav

        model = build_uniwav(config["model"])
    else:
        model = build_model(config["model"])
    weights = ckpt.get("model_avg") if averaged and ckpt.get("model_avg") is not None else ckpt["model"]
    model.load_state_dict(cast_like(weights, model.state_dict()))
    model.set_batch_count(float(ckpt.get("step", 0)))
    model.to(map_location).eval()
    return model, config
