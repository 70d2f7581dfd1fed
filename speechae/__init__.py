"""speechae: recipes for continuous-latent speech autoencoders.

The library holds all logic (models, losses, data, training, evaluation); recipes under
``egs/`` are thin shell scripts that call the ``speechae`` command.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202
    """``speechae.SpeechAE`` (the inference wrapper) is imported on first use, so that
    ``import speechae`` stays light (no torch)."""
    if name == "SpeechAE":
        from speechae.inference import SpeechAE

        return SpeechAE
    raise AttributeError(f"module 'speechae' has no attribute {name!r}")
