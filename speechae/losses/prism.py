"""Prism band split: DCT-II along time of the latent sequence, keeping only the low bands.

The Prism hypothesis (arXiv 2512.19693) puts semantic content in the low-frequency bands of a
latent sequence and detail in the high ones.  For speech the analogue is a DCT along time of
z (B, T_z, D): each utterance is transformed over its own valid length L with the orthonormal
DCT-II, the coefficients above ``ceil(keep * L)`` are zeroed, and the inverse DCT (the
transpose, since the basis is orthonormal) gives the low-band sequence the semantic heads see.
The reconstruction path is untouched, so detail stays free to live in the high bands.
"""

from __future__ import annotations

import math

import torch


def dct_matrix(n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix C (n, n): coefficients = C @ x, and x = C.T @ coefficients."""
    i = torch.arange(n, dtype=torch.float64)
    k = i.unsqueeze(1)
    c = torch.cos(math.pi * (i.unsqueeze(0) + 0.5) * k / n) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(device=device, dtype=dtype)


def lowpass_dct(z: torch.Tensor, lengths: torch.Tensor, keep: float) -> torch.Tensor:
    """Low-band view of z (B, T, D): per utterance, zero DCT coefficients >= ceil(keep * length).

    Padding frames are ignored on input and zero on output.  ``keep`` in (0, 1]; 1 is identity
    on the valid frames.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    out = torch.zeros_like(z)
    lens = [int(v) for v in lengths.tolist()]
    # Utterances of equal length share one projection matrix (buckets make that common).
    for length in sorted(set(lens)):
        if length <= 0:
            continue
        idx = torch.tensor([b for b, v in enumerate(lens) if v == length], device=z.device)
        k = max(1, math.ceil(keep * length))
        c = dct_matrix(length, z.device, torch.float32)[:k]
        proj = c.t() @ c  # (L, L) projector onto the low bands
        seg = z[idx, :length].float()
        out[idx, :length] = torch.einsum("st,btd->bsd", proj, seg).to(z.dtype)
    return out
