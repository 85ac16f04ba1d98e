"""A content-addressed blob store and the downloads that fill it.

Blobs live at ``<root>/sha256/<hex>``; a blob is there only once its bytes have been checked
against its digest (and its size where the descriptor gives one), so a reader never sees a
half-written or wrong blob. A download goes to ``<root>/partial/<hex>`` first: an interrupted one
resumes with an HTTP ``Range`` request where the server honours it and restarts otherwise; a
digest mismatch removes the partial file and raises :class:`InvalidChecksum`.

URLs are ``http``, ``https`` or ``file`` (what CM's GetBlobsInfos hands out).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Dict, Optional

from ..errors import Failed, InvalidArgument, InvalidChecksum, RuntimeFailure

log = logging.getLogger(__name__)

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_CHUNK = 1 << 16


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<64 hex>`` digest; anything else is an InvalidArgument."""
    match = _DIGEST_RE.fullmatch(digest)
    if match is None:
        raise InvalidArgument(f"unsupported blob digest {digest!r}: expected sha256:<64 hex digits>")
    return match.group(1)


class BlobStore:
    def __init__(self, root: Path, *, timeout: float = 60.0) -> None:
        self.root = root
        self._timeout = timeout
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "partial").mkdir(parents=True, exist_ok=True)
        # Instances start in parallel: two pulls needing one blob (a shared layer) must not write
        # the same partial file at once. One lock per digest; the second finds the blob there.
        self._guard = threading.Lock()
        self._locks: Dict[str, threading.Lock] = {}

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def digests(self) -> list[str]:
        return sorted(f"sha256:{p.name}" for p in (self.root / "sha256").iterdir())

    def fetch(self, digest: str, url: str, size: Optional[int] = None) -> Path:
        """The verified blob, downloading it from ``url`` if the store does not have it yet."""
        final = self.path(digest)
        if final.is_file():
            return final
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            return self._fetch_locked(digest, url, size, final)

    def _fetch_locked(self, digest: str, url: str, size: Optional[int], final: Path) -> Path:
        if final.is_file():
            return final
        partial = self.root / "partial" / final.name
        try:
            self._download(url, partial, size)
            self._verify(partial, digest, size)
            os.replace(partial, final)
        except OSError as err:
            raise RuntimeFailure.from_os_error(err, f"blob {digest}") from err
        return final

    def _verify(self, partial: Path, digest: str, size: Optional[int]) -> None:
        actual_size = partial.stat().st_size
        hasher = hashlib.sha256()
        with open(partial, "rb") as source:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                hasher.update(chunk)
        if size is not None and actual_size != size:
            partial.unlink()
            raise InvalidChecksum(f"size mismatch: {actual_size} bytes, descriptor says {size} (blob {digest})")
        if hasher.hexdigest() != digest_hex(digest):
            partial.unlink()
            raise InvalidChecksum(f"checksum mismatch: blob {digest} hashes to sha256:{hasher.hexdigest()}")

    def _download(self, url: str, partial: Path, size: Optional[int]) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme == "file":
            source_path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
            with open(source_path, "rb") as source, open(partial, "wb") as target:
                shutil.copyfileobj(source, target, _CHUNK)
            return
        if scheme not in ("http", "https"):
            raise InvalidArgument(f"unsupported blob URL scheme {scheme!r} in {url}")
        have = partial.stat().st_size if partial.exists() else 0
        if size is not None and have > size:
            partial.unlink()
            have = 0
        if size is not None and have == size:
            return
        request = urllib.request.Request(url)
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                resumed = have > 0 and response.status == 206
                if have and not resumed:
                    log.info("%s does not resume downloads: restarting %s", url, partial.name)
                with open(partial, "ab" if resumed else "wb") as target:
                    _copy(response, target)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:
                # Range not satisfiable: what we have is (at least) the whole blob; verify decides.
                return
            raise Failed(f"download failed: HTTP {err.code} {err.reason} ({url})") from err
        except urllib.error.URLError as err:
            raise Failed(f"download failed: {err.reason} ({url})") from err


def _copy(source: BinaryIO, target: BinaryIO) -> None:
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        target.write(chunk)
    target.flush()
    os.fsync(target.fileno())
