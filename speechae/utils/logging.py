"""Logging set-up shared by every command."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped log lines on stderr (idempotent)."""
    root = logging.getLogger()
    if getattr(root, "_speechae_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(module)s] %(message)s", "%H:%M:%S"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    root._speechae_configured = True  # type: ignore[attr-defined]
