"""Fault handling for the training loop: stop signals and debug dumps.

Exit codes of ``speechae train`` (also documented in ``speechae train --help``):

* 0  -- finished ``max_steps`` (or nothing left to do);
* 1  -- an exception (state and the offending batch are in ``<exp>/debug/``);
* 2  -- a user error: bad config or input, experiment directory in use (one line on stderr);
* 3  -- too many consecutive non-finite steps (batch and model in ``<exp>/debug/``);
* 75 -- stopped by SIGTERM/SIGINT (EX_TEMPFAIL: "try again"): after writing a checkpoint when
  training had started, at once during start-up; re-running the same command resumes.

This module imports no torch at load time: ``speechae train`` installs
:func:`exit_on_signal_during_startup` before its heavy imports.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from speechae.utils.io import atomic_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger("speechae.train")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 75


class NonFiniteError(RuntimeError):
    """Raised when training produced too many non-finite steps in a row."""


def _exit_interrupted(signum: int, frame: Any) -> None:  # noqa: ARG001
    sys.stderr.write(f"speechae: received {signal.Signals(signum).name} during start-up: stopping "
                     f"(nothing to checkpoint yet; exit code {EXIT_INTERRUPTED})\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_INTERRUPTED)


def exit_on_signal_during_startup() -> None:
    """Make SIGTERM/SIGINT end the process with :data:`EXIT_INTERRUPTED` until the training
    loop installs its :class:`StopFlag` (and again after it uninstalls it).

    Installed first thing by ``speechae train``: a scheduler that pre-empts a job during its
    5-10 s of imports and model building must see "try again" (75), not a crash.  Nothing is
    lost by stopping there: the newest checkpoint is still the newest state.
    """
    for sig in StopFlag.SIGNALS:
        signal.signal(sig, _exit_interrupted)


class StopFlag:
    """Turns SIGTERM / SIGINT into a flag the loop polls between steps.

    The first signal asks for a checkpoint and a clean exit; a second one restores the system
    default and re-raises it (so an impatient Ctrl-C still stops a process stuck in C code).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopFlag":
        """Install the handlers (main thread only); returns self."""
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were active before :meth:`install`."""
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is not None:
            self.uninstall()
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum
        log.warning("received %s: will checkpoint and stop after the current step",
                    signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None


def tensors_only(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The weights_only-safe part of a batch: tensors and lists of strings/numbers."""
    import torch

    out: dict[str, Any] = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            out[k] = v.detach().cpu()
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
            out[k] = list(v)
    return out


def dump_debug(exp_dir: str | Path, step: int, rank: int, reason: str, batch: Any,
               model_state: Mapping[str, torch.Tensor] | None, config: Mapping[str, Any],
               error: BaseException | None = None) -> Path:
    """Save the offending batch(es), model weights and context to ``<exp>/debug/``."""
    import torch

    path = Path(exp_dir) / "debug" / f"step{step:08d}-{reason}-rank{rank}.pt"
    if isinstance(batch, Mapping):
        batches = [tensors_only(batch)]
    elif isinstance(batch, (list, tuple)):
        batches = [tensors_only(b) for b in batch if isinstance(b, Mapping)]
    else:
        batches = []
    payload = {"step": step, "rank": rank, "reason": reason, "batches": batches,
               "model": dict(model_state) if model_state is not None else None, "config": dict(config),
               "traceback": "".join(traceback.format_exception(error)) if error is not None else ""}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    log.error("debug dump written to %s", path)
    return path
