"""The generic loop with a task that holds two modules and two optimizers (a toy adversarial
pair updated discriminator-then-generator): every module and optimizer is checkpointed, an
update with a non-finite loss changes nothing, and a resumed run ends bit-identical."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from speechae.config import ConfigError
from speechae.data.datamodule import DataConfig
from speechae.optim import OptimConfig, build_optimizer
from speechae.train.ae_task import AutoencoderTask
from speechae.train.checkpoint import load_checkpoint
from speechae.train.config import TrainConfig, experiment_config_from_dict
from speechae.train.distributed import DistEnv
from speechae.train.faults import EXIT_OK
from speechae.train.task import TASKS, Task
from speechae.train.trainer import Trainer, build_dataloaders


@dataclasses.dataclass
class ToyConfig:
    task: str = "toy_pair"
    hidden: int = 4
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        name="adamw", lr=1e-2, scheduler="warmup_cosine", warmup_batches=1, total_batches=20))
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        from speechae.config import to_dict

        return to_dict(self)


class ToyPair(Task):
    """gen: frame-wise linear map of the features; disc: a linear critic. Per step one
    discriminator update on the detached output, then one generator update."""

    config_class = ToyConfig
    primary = "gen"
    primary_optimizer = "gen"
    poison_disc_at: int | None = None

    def __init__(self, cfg: ToyConfig, device: torch.device, distributed: bool = False) -> None:
        super().__init__(cfg, device, distributed)
        self.gen, self.disc = nn.Linear(80, 80), nn.Linear(80, 1)
        self.modules = {"gen": self.gen, "disc": self.disc}
        for name, m in self.modules.items():
            opt, sched = build_optimizer(list(m.named_parameters()), cfg.optim)
            self.optimizers[name], self.schedulers[name] = opt, sched

    @classmethod
    def build_dataloaders(cls, cfg: Any, world_size: int, rank: int) -> tuple[Any, Any]:
        return AutoencoderTask.build_dataloaders(cfg, world_size, rank)

    def train_step(self, batches, step, updater):
        fakes: dict[int, torch.Tensor] = {}

        def d_loss(b):
            fake = self.gen(b["features"])
            fakes[id(b)] = fake
            loss = torch.relu(1 - self.disc(b["features"])).mean() + torch.relu(1 + self.disc(fake.detach())).mean()
            if step == self.poison_disc_at:
                loss = loss * float("nan")
            return loss, {"loss/d": loss.detach()}

        def g_loss(b):
            fake = fakes[id(b)]
            loss = -self.disc(fake).mean() + (fake - b["features"]).abs().mean()
            return loss, {"loss/g": loss.detach()}

        metrics = updater.update("disc", batches, d_loss)
        metrics.update(updater.update("gen", batches, g_loss))
        return metrics

    def valid_metrics(self, batch, step):
        return {"loss/l1": (self.gen(batch["features"]) - batch["features"]).abs().mean()}


TASKS.register("toy_pair", ToyPair)


def _config(make_config, **train: Any) -> ToyConfig:
    base = make_config()
    t = {"max_steps": 6, "save_every": 3, "valid_every": 3, "log_every": 1, "average_every": 2,
         "tensorboard": False, "num_threads": 1, "seed": 3, **train}
    return experiment_config_from_dict({"task": "toy_pair", "data": base["data"], "train": t})


def _trainer(cfg: ToyConfig, exp: Path) -> Trainer:
    env = DistEnv()
    train_dl, valid_dl, _ = build_dataloaders(cfg, env)
    return Trainer(cfg, exp, env, train_dl, valid_dl)


def test_config_picks_the_task_class_and_rejects_unknown_tasks(make_config) -> None:
    assert isinstance(_config(make_config), ToyConfig)
    with pytest.raises(ConfigError, match="unknown task 'gan'.*autoencoder"):
        experiment_config_from_dict({"task": "gan"})


def test_every_module_and_optimizer_is_checkpointed(tmp_path: Path, make_config) -> None:
    cfg = _config(make_config)
    trainer = _trainer(cfg, tmp_path / "exp")
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in trainer.task.modules.items()}
    assert trainer.fit() == EXIT_OK
    state = load_checkpoint(tmp_path / "exp")
    assert state["task"] == "toy_pair" and set(state["modules"]) == {"gen", "disc"}
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"gen", "disc"}
    assert all(state["optimizers"][n]["state"] for n in ("gen", "disc"))  # both were stepped
    for name in ("gen", "disc"):
        assert not torch.equal(state["modules"][name]["weight"], before[name]["weight"]), name
    # the primary module is the averaged one and the checkpoint's "model"
    assert state["model"].keys() == state["modules"]["gen"].keys() and state["avg_step"] == 6
    assert set(state["model_avg"]) == {"weight", "bias"}


def test_a_non_finite_update_changes_nothing_and_is_counted(tmp_path: Path, make_config) -> None:
    cfg = _config(make_config, max_steps=3, valid_every=0)
    trainer = _trainer(cfg, tmp_path / "exp")
    ToyPair.poison_disc_at = 1
    try:
        m0 = trainer.train_step(trainer.next_batch())
        disc = {k: v.clone() for k, v in trainer.task.disc.state_dict().items()}
        gen = {k: v.clone() for k, v in trainer.task.gen.state_dict().items()}
        m1 = trainer.train_step(trainer.next_batch())
    finally:
        ToyPair.poison_disc_at = None
    assert m0["train/skipped"] == 0 and m1["train/skipped"] == 1 and m1["train/nonfinite_steps"] == 1
    assert all(torch.equal(v, trainer.task.disc.state_dict()[k]) for k, v in disc.items())  # disc skipped
    assert not torch.equal(gen["weight"], trainer.task.gen.weight)  # the finite update still ran
    assert "train/grad_norm" in m1 and "train/disc/grad_norm" in m1 and "train/disc/lr" in m1


def test_resume_of_a_two_optimizer_task_is_exact(tmp_path: Path, make_config) -> None:
    cfg = _config(make_config)
    straight = _trainer(cfg, tmp_path / "straight")
    assert straight.fit() == EXIT_OK
    half = _trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=3)), tmp_path / "resumed")
    assert half.fit() == EXIT_OK
    resumed = _trainer(cfg, tmp_path / "resumed")
    assert resumed.fit() == EXIT_OK and resumed.step == 6
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for name in ("gen", "disc"):
        for k, v in a["modules"][name].items():
            torch.testing.assert_close(b["modules"][name][k], v, atol=0, rtol=0, msg=f"{name}.{k}")
    for k, v in a["model_avg"].items():
        torch.testing.assert_close(b["model_avg"][k], v, atol=0, rtol=0)
