"""Entry point of one training process: experiment directory, logging, data, :class:`Trainer`.

``run_training`` is what ``speechae train`` calls in every process (one process, or each
torchrun worker).  Before anything is built, the main rank

* checks the config's inputs (:func:`check_inputs`: paths exist, unit and token ids fit the
  heads), so a wrong path or class count is one clear error, not a crash at step 0;
* locks the experiment directory (:class:`ExperimentLock`): a second run into the same
  directory stops with an error naming the running one instead of overwriting its files;
* writes ``config.yaml`` and ``command.sh``, refusing to resume an experiment whose stored config
  differs from the requested one in anything but :data:`~speechae.train.config.RESUME_SAFE_KEYS`
  (a silent change of recipe half-way is the bug this prevents; ``allow_config_change``
  overrides);
* removes temporary checkpoint files of writes that were killed.

The other ranks wait for that and stop too when it failed.  Then it trains and returns the
exit code documented in :mod:`speechae.train.faults`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from speechae.config import ConfigError
from speechae.train import checkpoint as ck
from speechae.train.config import RESUME_SAFE_KEYS, ExperimentConfig, dump_config
from speechae.train.distributed import DistEnv, all_reduce_max, cleanup_distributed, init_distributed
from speechae.train.faults import EXIT_ERROR
from speechae.train.logger import add_file_handler
from speechae.train.task import task_class
from speechae.train.trainer import Trainer, build_dataloaders
from speechae.utils.io import atomic_path, current_umask
from speechae.utils.logging import setup_logging

log = logging.getLogger("speechae.train")

UNITS_CHECKED_CUTS = 32  # training cuts whose units are compared with num_classes up front


class ExperimentLockedError(RuntimeError):
    """Another live process is training into the same experiment directory."""


class ExperimentLock:
    """An exclusive ``flock`` on ``<exp_dir>/.lock``, holding ``pid <pid> on <host> since <time>``.

    The kernel drops the lock when its holder exits, however it exits (kill -9 included), so a
    lock file left behind by a dead run never blocks the next one.  Local file systems and NFS
    support it; where the file system refuses locks, training goes on with a warning.
    """

    def __init__(self, exp_dir: str | Path) -> None:
        self.path = Path(exp_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "ExperimentLock":
        """Take the lock or raise :class:`ExperimentLockedError` naming the directory and holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "holder unknown"
            os.close(fd)
            raise ExperimentLockedError(
                f"{self.path.parent} is in use by another training run ({holder}); wait for it to "
                f"finish or stop it, or train into another --exp-dir") from None
        except OSError as e:
            os.close(fd)
            log.warning("%s: file locking not supported here (%s); a second run into this directory "
                        "would not be detected", self.path, e.strerror)
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "ExperimentLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------- inputs


def _show(path: str) -> str:
    return path if Path(path).is_absolute() else f"{path} (relative to {Path.cwd()})"


def _first_cuts(path: str, n: int) -> list[Any]:
    """The first ``n`` cuts of a manifest or Shar directory, read lazily."""
    import itertools

    from lhotse import load_manifest_lazy

    from speechae.data.shar import is_shar_dir, load_shar

    cuts = load_shar(path) if is_shar_dir(path) else load_manifest_lazy(path)
    return list(itertools.islice(iter(cuts), n))


def _max_unit(cuts: list[Any]) -> int | None:
    """Largest k-means unit id over ``cuts``; None when they carry no units."""
    import numpy as np

    if not cuts or not all(c.has_custom("units") for c in cuts):
        return None
    return max(int(np.max(c.load_custom("units"), initial=-1)) for c in cuts)


def _max_table_id(path: Path) -> int:
    from speechae.data.targets import load_table

    return max(load_table(path).values(), default=-1)


def check_inputs(cfg: ExperimentConfig) -> None:
    """Raise ConfigError listing every problem found in the config's inputs.

    Checked: ``data.train_cuts`` / ``data.dev_cuts`` / ``data.lang_dir`` exist (``dev_cuts`` and
    ``lang_dir`` may be set to ``''`` to go without); the unit ids of the first
    :data:`UNITS_CHECKED_CUTS` training cuts are below ``masked_units.num_classes``; the CTC
    label ids (sentencepiece pieces + 1, or ``phones.txt`` ids, plus ``target_offset``) are below
    ``ctc.vocab_size``.
    """
    from speechae.losses.builder import active_terms

    d, losses = cfg.data, cfg.losses
    problems = []
    train_ok = bool(d.train_cuts) and Path(d.train_cuts).exists()
    if not train_ok:
        problems.append(f"data.train_cuts: {_show(d.train_cuts)} does not exist (run the data stages 0-3)")
    if d.dev_cuts and not Path(d.dev_cuts).exists():
        problems.append(f"data.dev_cuts: {_show(d.dev_cuts)} does not exist (set data.dev_cuts='' to train "
                        f"without validation)")
    lang = Path(d.lang_dir) if d.lang_dir else None
    if lang is not None and not lang.is_dir():
        problems.append(f"data.lang_dir: {_show(d.lang_dir)} is not a directory (stage 3 writes it)")
        lang = None
    terms = active_terms(losses)
    mu = losses.masked_units
    if "masked_units" in terms and train_ok:
        if mu.target_key == "units":
            top = _max_unit(_first_cuts(d.train_cuts, UNITS_CHECKED_CUTS))
            if top is None:
                problems.append(f"losses: masked_units needs k-means units, but the cuts in {d.train_cuts} carry "
                                f"none (use stage 3's targets cuts)")
            elif top >= mu.num_classes:
                problems.append(f"losses.masked_units.num_classes={mu.num_classes}, but {d.train_cuts} holds unit "
                                f"id {top}: set it to the k-means cluster count (>= {top + 1})")
        elif mu.target_key == "phones" and lang is not None and (lang / "phones.txt").is_file():
            top = _max_table_id(lang / "phones.txt")
            if top >= mu.num_classes:
                problems.append(f"losses.masked_units.num_classes={mu.num_classes}, but {lang}/phones.txt has id "
                                f"{top}: set it to >= {top + 1}")
    if "ctc" in terms and lang is not None:
        c = losses.ctc
        if c.target_key == "tokens":
            model = lang / "bpe.model"
            if not model.is_file():
                problems.append(f"losses: ctc on tokens needs {model} (stage 3 writes it)")
                top = None
            else:
                import sentencepiece as spm

                top = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()  # ids are piece + 1
        else:
            table = lang / "phones.txt"
            top = _max_table_id(table) if table.is_file() else None
            if top is None:
                problems.append(f"losses: ctc on {c.target_key} needs {table} (stage 3 writes it)")
        if top is not None and top + c.target_offset >= c.vocab_size:
            problems.append(f"losses.ctc.vocab_size={c.vocab_size}, but {c.target_key} ids reach "
                            f"{top + c.target_offset} (with target_offset {c.target_offset}): set it to >= "
                            f"{top + c.target_offset + 1}")
    if problems:
        raise ConfigError("; ".join(problems))


# ----------------------------------------------------------------------------- experiment files


def write_experiment_files(cfg: ExperimentConfig, exp_dir: Path, command: Sequence[str],
                           allow_config_change: bool = False) -> None:
    """Write ``config.yaml`` (resolved) and ``command.sh``; check a resumed config matches.

    A resume (the directory holds checkpoints) may change only :data:`RESUME_SAFE_KEYS`
    (logged); any other change raises ConfigError listing old and new values unless
    ``allow_config_change``.
    """
    exp_dir.mkdir(parents=True, exist_ok=True)
    text = dump_config(cfg)
    cfg_path = exp_dir / "config.yaml"
    if cfg_path.is_file() and ck.list_checkpoints(exp_dir / "checkpoints"):
        old, new = yaml.safe_load(cfg_path.read_text(encoding="utf-8")), yaml.safe_load(text)
        if isinstance(old, dict):
            old.setdefault("task", "autoencoder")  # configs written before these keys existed
            if old["task"] == "autoencoder":
                old.setdefault("imports", [])
                if "waveform" not in old and isinstance(new, dict):
                    old["waveform"] = new.get("waveform")  # absent = the default: off
        changed = sorted(_diff_keys(old, new))
        risky = [k for k in changed if k not in RESUME_SAFE_KEYS]
        shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in (risky or changed))
        if risky and not allow_config_change:
            raise ConfigError(f"{cfg_path}: resuming with a different config ({shown}); use a new --exp-dir, "
                              f"or --allow-config-change to resume anyway")
        if changed:
            log.warning("resuming with a changed config: %s", shown)
    with atomic_path(cfg_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    script = "#!/usr/bin/env bash\n# Re-runs (and resumes) this experiment.\ncd " + shlex.quote(str(Path.cwd())) + \
        "\n" + " ".join(shlex.quote(c) for c in command) + "\n"
    with atomic_path(exp_dir / "command.sh") as tmp:
        tmp.write_text(script, encoding="utf-8")
        tmp.chmod(0o777 & ~current_umask())


def _diff_keys(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _prepare_experiment(cfg: ExperimentConfig, exp_dir: Path, command: Sequence[str],
                        allow_config_change: bool) -> tuple[ExperimentLock, logging.Handler]:
    """Main rank's set-up; on failure nothing it took stays held."""
    task_class(cfg.task).check_inputs(cfg)
    lock = ExperimentLock(exp_dir).acquire()
    try:
        write_experiment_files(cfg, exp_dir, command, allow_config_change)
        handler = add_file_handler(exp_dir / "log" / "train.log")
    except BaseException:
        lock.release()
        raise
    removed = ck.remove_stale_temp_files(exp_dir / "checkpoints")
    if removed:
        log.info("removed %d temporary file(s) of interrupted checkpoint writes: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return lock, handler


def run_training(cfg: ExperimentConfig, exp_dir: str | Path, command: Sequence[str] = (),
                 allow_config_change: bool = False, env: DistEnv | None = None) -> int:
    """Train ``cfg`` in ``exp_dir`` in this process (DDP when torchrun variables are set)."""
    setup_logging()
    exp_dir = Path(exp_dir)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    own_group = env is None
    env = env or init_distributed(cfg.train.device, cfg.train.ddp_backend)
    if not env.is_main:  # progress lines come from rank 0; other ranks report problems only
        logging.getLogger().setLevel(logging.WARNING)
    lock: ExperimentLock | None = None
    handler: logging.Handler | None = None
    try:
        error: BaseException | None = None
        if env.is_main:
            try:
                lock, handler = _prepare_experiment(cfg, exp_dir, command, allow_config_change)
                log.info("experiment %s: world size %d, device %s", exp_dir, env.world_size, env.device)
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = e
        if all_reduce_max(1.0 if error is not None else 0.0, env) > 0:  # also the set-up barrier
            if error is not None:
                raise error
            log.error("rank %d: rank 0 could not set up %s (see its error); stopping", env.rank, exp_dir)
            return EXIT_ERROR
        train_dl, valid_dl, _ = build_dataloaders(cfg, env)
        trainer = Trainer(cfg, exp_dir, env, train_dl, valid_dl)
        if env.is_main:
            log.info("%s", trainer.task.describe())
        return trainer.fit()
    except Exception:
        if handler is not None:  # the traceback goes to train.log even when the CLI prints one line
            handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "training stopped by an error",
                                          None, sys.exc_info()))
        raise
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if lock is not None:
            lock.release()
        if own_group:
            cleanup_distributed()
