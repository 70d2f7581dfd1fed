"""Click wrappers behind the ``speechae`` command (one module per area)."""
