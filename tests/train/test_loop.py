"""The training loop in-process: experiment files, metrics, validation, non-finite handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from speechae.train.checkpoint import list_checkpoints, load_checkpoint
from speechae.train.config import experiment_config_from_dict
from speechae.train.distributed import DistEnv
from speechae.train.faults import EXIT_NONFINITE, EXIT_OK
from speechae.train.run import run_training
from speechae.train.trainer import Trainer, build_dataloaders


def _records(exp: Path) -> list[dict]:
    return [json.loads(x) for x in (exp / "log" / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_experiment_dir(tmp_path: Path, make_config) -> None:
    cfg = experiment_config_from_dict(make_config(train={"max_steps": 6}))
    exp = tmp_path / "exp"
    assert run_training(cfg, exp, ["speechae", "train", "x.yaml", "--exp-dir", str(exp)]) == EXIT_OK
    assert (exp / "config.yaml").is_file() and "--exp-dir" in (exp / "command.sh").read_text()
    assert "finished 6 steps" in (exp / "log" / "train.log").read_text()
    assert list((exp / "tensorboard").glob("events.out.tfevents.*"))
    assert [s for s, _ in list_checkpoints(exp / "checkpoints")] == [3, 6]  # keep_last_k=2
    train = [r for r in _records(exp) if "split" not in r]
    assert [r["step"] for r in train] == list(range(1, 7))
    for key in ("loss/recon", "loss/sigreg", "loss/masked_units", "weight/sigreg", "train/lr",
                "train/grad_norm", "train/audio_s_per_s", "train/steps_per_s", "sigreg/floor"):
        assert all(key in r for r in train), key
    valid = [r for r in _records(exp) if r.get("split") == "valid"]
    assert [r["step"] for r in valid] == [3, 6] and "valid/loss/recon" in valid[0]
    state = load_checkpoint(exp)
    assert state["step"] == 6 and state["model_avg"] is not None and state["avg_step"] == 6
    # a second run of the same command is a no-op
    assert run_training(cfg, exp) == EXIT_OK
    assert len(_records(exp)) == len(train) + len(valid)


def test_nan_batch_is_skipped_and_training_goes_on(tmp_path: Path, make_config, monkeypatch) -> None:
    cfg = experiment_config_from_dict(make_config(train={"max_steps": 5, "valid_every": 0}))
    env = DistEnv()
    train_dl, _, _ = build_dataloaders(cfg, env)
    trainer = Trainer(cfg, tmp_path / "exp", env, train_dl, None)
    original = trainer.next_batch

    def poisoned():
        batch = original()
        if trainer.step == 2:
            batch = dict(batch, features=batch["features"].clone())
            batch["features"][0, 3, 5] = float("nan")
        return batch

    monkeypatch.setattr(trainer, "next_batch", poisoned)
    assert trainer.fit() == EXIT_OK
    assert trainer.step == 5 and trainer.counters["nonfinite_steps"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    recs = _records(tmp_path / "exp")
    assert recs[2]["train/skipped"] == 1.0 and recs[2]["train/nonfinite_steps"] == 1.0
    assert recs[2]["loss/recon"] == "nan" and math.isfinite(recs[-1]["loss/recon"])
    assert recs[-1]["train/nonfinite_steps"] == 1.0 and recs[-1]["train/skipped"] == 0.0


def test_consecutive_nonfinite_steps_stop_with_debug_dump(tmp_path: Path, make_config, monkeypatch) -> None:
    cfg = experiment_config_from_dict(make_config(train={"max_steps": 10, "valid_every": 0,
                                                         "max_consecutive_nonfinite": 2}))
    env = DistEnv()
    train_dl, _, _ = build_dataloaders(cfg, env)
    trainer = Trainer(cfg, tmp_path / "exp", env, train_dl, None)
    original = trainer.next_batch
    monkeypatch.setattr(trainer, "next_batch", lambda: dict(original(), features=torch.full((1, 50, 80), float("inf")),
                                                           feature_lens=torch.tensor([50])))
    assert trainer.fit() == EXIT_NONFINITE
    dumps = list((tmp_path / "exp" / "debug").glob("*nonfinite*.pt"))
    assert len(dumps) == 1
    dump = torch.load(dumps[0], weights_only=True)
    assert dump["batches"][0]["features"].isinf().all() and dump["model"] is not None


def test_gradient_accumulation_and_bf16_run(tmp_path: Path, make_config) -> None:
    cfg = experiment_config_from_dict(make_config(train={"max_steps": 2, "accum_grad": 2, "amp": "bf16",
                                                         "valid_every": 0, "save_every": 2}))
    assert run_training(cfg, tmp_path / "exp") == EXIT_OK
    recs = _records(tmp_path / "exp")
    assert len(recs) == 2 and all(math.isfinite(r["loss/total"]) for r in recs)
