"""Zipformer schedules advance with the data seen (issue 12): the batch count given to the model
is normalised by batch duration, world size and gradient accumulation, as in the reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechae.train.config import adjusted_batch_count, experiment_config_from_dict
from speechae.train.distributed import DistEnv
from speechae.train.trainer import Trainer, build_dataloaders


def test_adjusted_batch_count_by_hand() -> None:
    # icefall LibriSpeech: 1000 s per GPU on 4 GPUs, reference 600 s -> 6.67 batches per update
    assert adjusted_batch_count(300, 1000.0, 4, 1, 600.0) == pytest.approx(2000.0)
    # 8 GPUs see 8x the data per update, so the schedules move 8x faster per update
    assert adjusted_batch_count(10, 600.0, 8, 1, 600.0) == 8 * adjusted_batch_count(10, 600.0, 1, 1, 600.0)
    assert adjusted_batch_count(10, 30.0, 1, 2, 30.0) == 20.0  # accumulation counts too
    with pytest.raises(ValueError):
        adjusted_batch_count(1, 30.0, 1, 1, 0.0)


def test_trainer_gives_the_model_the_adjusted_count(tmp_path: Path, make_config) -> None:
    cfg = experiment_config_from_dict(make_config(train={"max_steps": 2, "ref_duration": 5.0},
                                                  data={"max_duration": 10.0}))
    train_dl, valid_dl, _ = build_dataloaders(cfg, DistEnv())
    trainer = Trainer(cfg, tmp_path / "exp", DistEnv(), train_dl, None)
    batch = next(iter(train_dl))
    trainer.step = 7
    trainer.train_step(batch)
    assert trainer.model.batch_count == pytest.approx(7 * 10.0 / 5.0)
