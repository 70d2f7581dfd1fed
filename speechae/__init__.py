"""speechae: recipes for continuous-latent speech autoencoders.

The library holds all logic (models, losses, data, training, evaluation); recipes under
``egs/`` are thin shell scripts that call the ``speechae`` command.
"""

__version__ = "0.1.0"
