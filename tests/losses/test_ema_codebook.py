"""DinoSR/UniWav self-distillation pieces, hand-computed: the teacher's EMA step and decay
schedule, codeword assignment, the codebook's EMA update, instance norm on valid frames, and a
masked-prediction loss that only sees masked frames."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speechae.losses.ema_codebook import (CodebookTargets, OnlineCodebook, ema_update_, instance_norm,
                                          masked_prediction_loss, teacher_decay)


def test_teacher_decay_schedule() -> None:
    assert teacher_decay(0) == pytest.approx(0.999)
    assert teacher_decay(15000) == pytest.approx(0.99945)
    assert teacher_decay(30000) == pytest.approx(0.9999)
    assert teacher_decay(10**6) == pytest.approx(0.9999)
    assert teacher_decay(5, 0.9, 0.99, 0) == 0.99


def test_ema_update_by_hand() -> None:
    teacher, student = nn.Linear(2, 1), nn.Linear(2, 1)
    bn_t, bn_s = nn.BatchNorm1d(1), nn.BatchNorm1d(1)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, -2.0]]))
        teacher.bias.fill_(0.5)
        student.weight.copy_(torch.tensor([[3.0, 2.0]]))
        student.bias.fill_(-0.5)
        bn_s.running_mean.fill_(4.0)
        bn_s.num_batches_tracked.fill_(7)
    ema_update_(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, torch.tensor([[1.2, -1.6]]))  # 0.9 * 1 + 0.1 * 3, ...
    torch.testing.assert_close(teacher.bias, torch.tensor([0.4]))
    assert student.weight.tolist() == [[3.0, 2.0]]  # the student is untouched
    ema_update_(bn_t, bn_s, 0.75)
    torch.testing.assert_close(bn_t.running_mean, torch.tensor([1.0]))  # float buffers: averaged
    assert int(bn_t.num_batches_tracked) == 7  # integer buffers: copied


def test_codebook_assignment_by_hand() -> None:
    cb = OnlineCodebook(2, 3)
    cb.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]]))
    x = torch.tensor([[0.1, -0.1], [0.9, 1.2], [-1.5, 0.4], [0.6, 0.6]])
    assert cb.assign(x).tolist() == [0, 1, 2, 1]
    cos = OnlineCodebook(2, 3, distance="cosine")
    cos.embed.copy_(torch.tensor([[1.0, 0.0], [0.0, 5.0], [-1.0, -1.0]]))
    # cosine ignores the norm: [10, 1] is closest in angle to [1, 0] although far in L2
    assert cos.assign(torch.tensor([[10.0, 1.0], [0.1, 0.2], [-3.0, -2.0]])).tolist() == [0, 1, 2]


def test_codebook_ema_update_by_hand() -> None:
    cb = OnlineCodebook(2, 3, decay=0.5)
    start = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    cb.embed.copy_(start)
    cb.ema_sum.copy_(start)
    cb.ema_count.fill_(1.0)
    x = torch.tensor([[0.2, 0.0], [0.9, 1.2], [1.1, 0.8]])
    codes = cb.assign(x)
    assert codes.tolist() == [0, 1, 1]
    cb.update(x, codes)
    # codeword 0: sum 0.5*[0,0] + 0.5*[0.2,0] = [0.1,0], count 0.5*1 + 0.5*1 = 1 -> [0.1, 0]
    # codeword 1: sum 0.5*[1,1] + 0.5*[2.0,2.0] = [1.5,1.5], count 0.5 + 0.5*2 = 1.5 -> [1, 1]
    # codeword 2: no frame: sum and count both halve -> unchanged
    torch.testing.assert_close(cb.ema_count, torch.tensor([1.0, 1.5, 0.5]))
    torch.testing.assert_close(cb.embed, torch.tensor([[0.1, 0.0], [1.0, 1.0], [-2.0, 0.0]]))
    cb.update(torch.tensor([[1.3, 1.3]]), torch.tensor([1]))
    # codeword 1: sum 0.5*[1.5,1.5] + 0.5*[1.3,1.3] = [1.4,1.4], count 0.75 + 0.5 = 1.25
    torch.testing.assert_close(cb.embed[1], torch.tensor([1.12, 1.12]))


def test_instance_norm_uses_valid_frames_only() -> None:
    x = torch.randn(2, 7, 3) * 4 + 2
    lens = torch.tensor([7, 4])
    y = instance_norm(x, lens)
    assert y[1, 4:].abs().max() == 0
    for b, n in enumerate(lens.tolist()):
        torch.testing.assert_close(y[b, :n].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(y[b, :n].var(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    x2 = x.clone()
    x2[1, 4:] = 1e4  # padding content is irrelevant
    torch.testing.assert_close(instance_norm(x2, lens), y)


def test_masked_prediction_loss_sees_masked_frames_only() -> None:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)]
    codes = [torch.randint(0, 4, (2, 6), generator=g), torch.randint(0, 4, (2, 6), generator=g)]
    select = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    loss, acc = masked_prediction_loss(logits, codes, select)
    want = sum(F.cross_entropy(lg[select], c[select]) for lg, c in zip(logits, codes)) / 2
    torch.testing.assert_close(loss, want)
    # changing logits or codes of unmasked frames changes nothing
    logits2 = [lg.masked_fill(~select.unsqueeze(-1), 50.0) for lg in logits]
    codes2 = [c.masked_fill(~select, 3) for c in codes]
    torch.testing.assert_close(masked_prediction_loss(logits2, codes2, select)[0], loss)
    # perfect logits on masked frames: loss -> 0, accuracy 1
    perfect = [F.one_hot(c, 4).float() * 100 for c in codes]
    lp, ap = masked_prediction_loss(perfect, codes, select)
    assert float(lp) < 1e-6 and float(ap) == 1.0
    empty, _ = masked_prediction_loss(logits, codes, torch.zeros_like(select))
    assert float(empty) == 0.0


def test_codebook_targets_mark_padding_and_update_only_when_asked() -> None:
    torch.manual_seed(0)
    obj = CodebookTargets([3, 5], student_dim=4, codebook_size=6)
    layers = [torch.randn(2, 8, 3), torch.randn(2, 8, 5)]
    lens = torch.tensor([8, 5])
    before = [cb.embed.clone() for cb in obj.codebooks]
    codes = obj.targets(layers, lens, update=False)
    assert all(torch.equal(cb.embed, b) for cb, b in zip(obj.codebooks, before))
    assert codes[0].shape == (2, 8) and (codes[1][1, 5:] == -1).all() and (codes[0][:, :5] >= 0).all()
    obj.targets(layers, lens, update=True)
    assert not torch.equal(obj.codebooks[0].embed, before[0])
    select = torch.zeros(2, 8, dtype=torch.bool)
    select[0, 2:6] = True
    loss, metrics = obj(torch.randn(2, 8, 4), codes, select)
    loss.backward()
    assert obj.heads[0].weight.grad is not None and float(loss.detach()) > 0
    assert 1.0 <= float(metrics["units/perplexity"]) <= 6.0 and not math.isnan(float(metrics["units/acc"]))
