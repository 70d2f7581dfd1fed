"""Speech autoencoder models: Zipformer encoder, continuous bottlenecks, decoder.

Public API: :class:`ModelConfig` + :func:`build_model` (the only config reader), the composed
:class:`SpeechAE` with its :class:`AEOutput`, and the preset table :data:`PRESETS`.
"""

from speechae.models.autoencoder import AEOutput, EncodeOutput, SpeechAE
from speechae.models.bottleneck import BottleneckOutput
from speechae.models.builder import PRESETS, ModelConfig, build_model, model_config_from_dict

__all__ = ["AEOutput", "BottleneckOutput", "EncodeOutput", "ModelConfig", "PRESETS", "SpeechAE",
           "build_model", "model_config_from_dict"]
