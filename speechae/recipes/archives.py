"""Fetch, verify and extract corpus archives.

Rules every recipe's stage 0 follows:

* an archive is never trusted because it exists: it is read through completely (every tar
  member or zip CRC; gzip's trailer catches truncation) before anything is extracted;
* extraction goes into a temporary directory inside the destination and is moved into place
  only when complete, with a ``.<name>.completed`` marker, so an interrupted stage never
  leaves a half-extracted part that a re-run would take as done;
* a bad archive is re-fetched (resumed first, then from scratch) when the network is up, and
  otherwise reported with a message that says how to provide the file;
* without network the check fails within seconds (:func:`network_available`), never after a
  long TCP timeout;
* extraction keeps every member inside the destination: tar members go through Python's
  ``filter="data"`` (no absolute paths, no ``..``, no links out of the tree, no device files,
  no setuid bits) where available, and a member escaping the destination is refused otherwise;
* where the publisher lists a checksum (:func:`fetch_archive`'s ``checksum``), a downloaded
  archive must match it (it is fetched again, then refused).  An archive the user placed in the
  download directory that does not match is used with a warning naming both digests: it may be
  a mirror's repack or a test fixture, and the structural check above still applies.

Downloads use Lhotse's ``resumable_download`` (HTTP Range resume of partial files).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import zipfile
from pathlib import Path
from urllib.parse import urlparse


class CorpusUnavailableError(RuntimeError):
    """The corpus is neither on disk nor downloadable; the message says how to provide it."""


class BadArchiveError(RuntimeError):
    """An archive is truncated or corrupt."""


def network_available(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``url``'s host opens within ``timeout`` seconds (DNS included).

    ``SPEECHAE_OFFLINE=1`` forces False (tests, air-gapped clusters).
    """
    if os.environ.get("SPEECHAE_OFFLINE", "0") == "1":
        return False
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own: run the whole probe in a thread and stop waiting.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def verify_archive(path: str | Path) -> int:
    """Read ``path`` (``.tar``, ``.tar.gz``/``.tgz`` or ``.zip``) end to end; return its member count.

    Raises :class:`BadArchiveError` naming the file when it is truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise BadArchiveError(f"{path}: archive missing or empty")
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise BadArchiveError(f"{path}: CRC mismatch in member {bad}")
                return len(zf.infolist())
        n = 0
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                n += 1
                if member.isfile():
                    f = tf.extractfile(member)
                    while f is not None and f.read(1 << 20):
                        pass
        return n
    except BadArchiveError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise BadArchiveError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {e})") from None


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file (``md5``, ``sha256``, ...), read in 1 MiB blocks."""
    h = hashlib.new(algorithm, usedforsecurity=False)  # integrity, not security: md5 is what OpenSLR lists
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"md5:<hex>"`` / ``"sha256:<hex>"`` -> (algorithm, lower-case hex)."""
    algorithm, sep, value = checksum.partition(":")
    if not sep or algorithm not in ("md5", "sha1", "sha256") or not value:
        raise ValueError(f"checksum {checksum!r} is not of the form md5:<hex> or sha256:<hex>")
    return algorithm, value.strip().lower()


def checksum_mismatch(path: str | Path, checksum: str | None) -> str | None:
    """None when ``path`` matches ``checksum`` (or there is none); else a message naming both."""
    if not checksum:
        return None
    algorithm, want = parse_checksum(checksum)
    got = file_digest(path, algorithm)
    return None if got == want else f"{path}: {algorithm} {got} differs from the published {want}"


def _safe_members_tar(tf: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    members = []
    root = dest.resolve()
    for m in tf.getmembers():
        target = (dest / m.name).resolve()
        if root != target and root not in target.parents:
            raise BadArchiveError(f"archive member escapes the destination: {m.name}")
        if m.issym() or m.islnk():
            continue  # corpora ship no links; never follow one out of the tree
        members.append(m)
    return members


def extract_archive(path: str | Path, dest_dir: str | Path, top_level: str | None = None) -> Path:
    """Verify ``path`` and extract it into ``dest_dir`` through a temporary directory.

    The archive's top-level entries are moved into ``dest_dir`` when extraction has finished;
    directories that already exist there are merged (a multi-part corpus such as OpenSLR 53's
    16 zips shares one top-level folder).  A ``dest_dir/.<archive name>.completed`` marker is
    written last.  Returns ``dest_dir / top_level`` (or ``dest_dir``).
    """
    path, dest_dir = Path(path), Path(dest_dir)
    verify_archive(path)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".extract.{path.name}.", dir=dest_dir))
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    target = (tmp / info.filename).resolve()
                    if tmp.resolve() not in target.parents and target != tmp.resolve():
                        raise BadArchiveError(f"{path}: member escapes the destination: {info.filename}")
                zf.extractall(tmp)
        else:
            with tarfile.open(path, "r:*") as tf:
                members = _safe_members_tar(tf, tmp)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.12, and 3.8.17+/3.9.17+/3.10.12+/3.11.4+
                    tf.extractall(tmp, members=members, filter="data")
                else:
                    tf.extractall(tmp, members=members)
        for entry in tmp.iterdir():
            _merge_move(entry, dest_dir / entry.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:  # FilterError is a TarError
        raise BadArchiveError(f"{path}: extraction failed ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    marker(dest_dir, path.name).write_text(f"{path.stat().st_size}\n")
    return dest_dir / top_level if top_level else dest_dir


def _merge_move(src: Path, dst: Path) -> None:
    if not dst.exists():
        os.replace(src, dst)
        return
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge_move(child, dst / child.name)
        return
    os.replace(src, dst)  # a file present in several parts (OpenSLR's utt_spk_text.tsv)


def marker(dest_dir: str | Path, archive_name: str) -> Path:
    """The completion marker of ``archive_name`` extracted into ``dest_dir``."""
    return Path(dest_dir) / f".{archive_name}.completed"


def fetch_archive(url: str, archive: str | Path, offline_hint: str, network: bool | None = None,
                  checksum: str | None = None) -> Path:
    """Make ``archive`` a complete, verified copy of ``url``.

    An existing file is verified first; a bad one is resumed (it may just be short) and, if
    still bad, downloaded from scratch.  With no network, a missing or bad archive raises
    :class:`CorpusUnavailableError` carrying ``offline_hint``.  ``checksum`` (``md5:<hex>`` or
    ``sha256:<hex>``, the publisher's): a download must match it; an existing file that does not
    is used with a warning (see the module doc).
    """
    from lhotse.utils import resumable_download

    archive = Path(archive)
    if archive.is_file():
        try:
            verify_archive(archive)
            mismatch = checksum_mismatch(archive, checksum)
            if mismatch:
                logging.warning("%s; using it as provided (delete it to download the published archive)",
                                mismatch)
            return archive
        except BadArchiveError as e:
            logging.warning("%s; fetching it again", e)
            problem = f"{e}"
    else:
        problem = f"{archive}: not found"
    if network is None:
        network = network_available(url)
    if not network:
        raise CorpusUnavailableError(f"{problem}, and {url} cannot be reached (no network).\n{offline_hint}")
    archive.parent.mkdir(parents=True, exist_ok=True)
    for attempt, force in enumerate((False, True)):
        logging.info("downloading %s -> %s%s", url, archive, " (from scratch)" if force else "")
        resumable_download(url, filename=archive, force_download=force)
        try:
            verify_archive(archive)
            mismatch = checksum_mismatch(archive, checksum)
            if mismatch:
                raise BadArchiveError(mismatch)
            return archive
        except BadArchiveError as e:
            logging.warning("%s (attempt %d)", e, attempt + 1)
            problem = str(e)
    raise BadArchiveError(f"{archive}: still bad after a fresh download of {url} ({problem})")
