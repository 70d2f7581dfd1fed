"""The listening evaluation: which utterances, what is compared with what, and what is written."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechae.data.datamodule import load_cuts
from speechae.eval.listen import ListenConfig, evaluate_listening, listening_report, select_cuts


@dataclass
class _Out:
    recon: torch.Tensor


class PerfectAE(torch.nn.Module):
    """Reconstructs its input exactly: the listening scores must equal copy-synthesis."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, lens):  # noqa: ANN001, ANN201
        return _Out(x + 0 * self.p)


class MeanAE(PerfectAE):
    """Forgets everything but the utterance's mean log-mel."""

    def forward(self, x, lens):  # noqa: ANN001, ANN201
        return _Out(x.mean(1, keepdim=True).expand_as(x) + 0 * self.p)


def _cuts(tiny):  # noqa: ANN001, ANN202
    with contextlib.chdir(tiny.root):
        return list(load_cuts(tiny.cuts("train")))


def test_languages_take_turns_and_the_choice_is_stable(tiny_dataset) -> None:
    cuts = _cuts(tiny_dataset)
    chosen = select_cuts(cuts, 6)
    langs = [c.supervisions[0].language for c in chosen]
    assert len(set(langs)) == 2 and all(a != b for a, b in zip(langs, langs[1:]))
    assert [c.id for c in select_cuts(list(reversed(cuts)), 6)] == [c.id for c in chosen]


def test_a_perfect_autoencoder_loses_nothing_against_copy_synthesis(tiny_dataset, tmp_path: Path) -> None:
    cfg = ListenConfig(num_utts=2, num_examples=1, judges=(), griffin_lim_iters=8)
    with contextlib.chdir(tiny_dataset.root):
        cuts = load_cuts(tiny_dataset.cuts("train"))
        perfect = evaluate_listening(PerfectAE(), cuts, tmp_path / "a", None, cfg, cache_dir=tmp_path / "cache")
        mean = evaluate_listening(MeanAE(), cuts, tmp_path / "b", None, cfg, cache_dir=tmp_path / "cache")
    assert perfect["num_utterances"] == 2 and perfect["vocoder"] == "griffin_lim"
    for key in ("waveform.stoi", "waveform.pesq_wb", "waveform.mrstft_logmag"):
        assert perfect["system"][key] == perfect["copy_griffin_lim"][key], key  # same synthesis of the same log-mel
    assert mean["copy_griffin_lim"] == perfect["copy_griffin_lim"]  # shared through the cache
    assert mean["system"]["waveform.stoi"] < perfect["system"]["waveform.stoi"] - 0.2
    assert mean["system"]["waveform.mrstft_logmag"] > perfect["system"]["waveform.mrstft_logmag"]
    # examples: the resynthesis lasts exactly as long as the original recording
    ex = tmp_path / "a" / "examples"
    orig = sorted(ex.glob("*_original.wav"))
    assert len(orig) == 1 and (ex / orig[0].name.replace("_original", "_logmel").replace(".wav", ".png")).is_file()
    a, sr = sf.read(orig[0])
    b, sr2 = sf.read(str(orig[0]).replace("_original", "_system"))
    assert sr == sr2 == 16000 and len(a) == len(b) and np.abs(b).max() > 0
    text = listening_report(perfect)
    assert "| this system (reconstruction -> vocoder) |" in text and "Griffin-Lim on the true log-mel" in text
