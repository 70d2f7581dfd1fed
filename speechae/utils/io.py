"""Atomic file output and small I/O helpers shared by every stage.

A stage must never leave a half-written file that a re-run would trust: everything is written
to a temporary sibling and moved into place with :func:`os.replace` (atomic on POSIX).  The
result has the permissions a plain ``open()`` would give it (``0666`` / ``0777`` minus the
umask), so colleagues sharing the storage can read it; ``mkstemp`` alone would make it 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is racy)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _split_name(path: Path) -> tuple[str, str]:
    """``x.jsonl.gz`` -> (``x``, ``.jsonl.gz``)."""
    stem, dot, rest = path.name.partition(".")
    return stem, f"{dot}{rest}" if dot else ""


def temp_file_pattern(stem_regex: str, suffix: str) -> re.Pattern[str]:
    """Regex for the temporary siblings :func:`atomic_path` creates for files named
    ``<stem><suffix>`` with ``stem`` matching ``stem_regex`` (e.g. ``ckpt-\\d+`` and ``.pt``).
    Used to remove the leftovers of killed writers."""
    return re.compile(rf"^\.(?:{stem_regex})\.tmp[A-Za-z0-9_]+{re.escape(suffix)}$")


@contextlib.contextmanager
def atomic_path(path: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps ``path``'s suffixes (``x.jsonl.gz`` -> ``.x.tmp123.jsonl.gz``) so
    that libraries choosing a format by extension (Lhotse) behave the same.
    On an exception the temporary file or directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = _split_name(path)
    prefix = f".{stem}.tmp"  # keep in step with temp_file_pattern
    umask = current_umask()
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        os.chmod(tmp, 0o777 & ~umask)
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~umask)
        finally:
            os.close(fd)
        tmp = Path(tmp_name)
    try:
        yield tmp
        if is_dir and path.exists():
            old = path.with_name(f".{stem}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as pretty UTF-8 JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def write_lines(path: str | Path, lines: list[str]) -> None:
    """Write one item per line (UTF-8), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file; a decoding error names the file and line."""
    path = Path(path)
    out = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\n\r")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if line.strip():
                out.append(line)
    return out
