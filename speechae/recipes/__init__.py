"""Corpus download and preparation for the real-data recipes.

One module per corpus (``librispeech``, ``openslr53``, ``commonvoice``, ``bengaliai``) with
``download_*`` / ``prepare_*`` functions; :mod:`speechae.recipes.archives` holds the shared
fetch-verify-extract logic and :mod:`speechae.recipes.common` the shared manifest finishing
(validation, text normalisation, resampling, writing ``<prefix>_{recordings,supervisions}_<split>``).
:mod:`speechae.recipes.fixtures` writes small synthetic corpora laid out like the real ones.
"""
