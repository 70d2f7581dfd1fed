"""Training objectives: reconstruction, regularizers on z (SIGReg / KL), semantic objectives,
weight schedules and the :class:`LossComposer` that combines them for one training step."""

from speechae.losses.builder import (DEFAULT_WEIGHTS, CTCConfig, DistillConfig, KLConfig,
                                     LatentPredictionConfig, LossConfig, MaskedUnitsConfig,
                                     MaskingConfig, PrismConfig, ReconConfig, SIGRegConfig,
                                     build_losses)
from speechae.losses.composer import LossComposer
from speechae.losses.kl import KLRegularizer, gaussian_kl
from speechae.losses.prism import dct_matrix, lowpass_dct
from speechae.losses.reconstruction import (MultiResolutionSTFTLoss, ReconstructionLoss,
                                            WaveformLoss, masked_l1, masked_l2)
from speechae.losses.schedules import build_schedule
from speechae.losses.semantic import (CTCObjective, Distillation, LatentPrediction,
                                      MaskedUnitPrediction, SemanticInputs)
from speechae.losses.sigreg import SIGReg, effective_rank, gaussian_floor

__all__ = [
    "CTCConfig", "CTCObjective", "DEFAULT_WEIGHTS", "Distillation", "DistillConfig", "KLConfig",
    "KLRegularizer", "LatentPrediction", "LatentPredictionConfig", "LossComposer", "LossConfig",
    "MaskedUnitPrediction", "MaskedUnitsConfig", "MaskingConfig", "MultiResolutionSTFTLoss",
    "PrismConfig", "ReconConfig", "ReconstructionLoss", "SIGReg", "SIGRegConfig", "SemanticInputs",
    "WaveformLoss", "build_losses", "build_schedule", "dct_matrix", "effective_rank",
    "gaussian_floor", "gaussian_kl", "lowpass_dct", "masked_l1", "masked_l2",
]
