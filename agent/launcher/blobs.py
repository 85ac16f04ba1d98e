"""A content-addressed blob store and the downloads that fill it.

Blobs live at ``<root>/sha256/<hex>``; a blob is there only once its bytes have been checked
against its digest (and its size where the descriptor gives one), so a reader never sees a
half-written or wrong blob. A download goes to ``<root>/partial/<hex>`` first. A broken one (the
connection dropped or timed out, a 5xx answer) is tried again, 3 tries in all, 1 s apart growing to
5 s (INSTANCES.md "The image", the reference's downloader), each resuming with an HTTP ``Range``
request from the bytes already in the partial file; a server that ignores the range (200 instead
of 206) gets the download restarted from byte 0. A digest mismatch raises
:class:`InvalidChecksum`; when a fetch fails for good its partial file is removed, so nothing
half-written stays on the image partition.

URLs are ``http``, ``https`` or ``file`` (what CM's GetBlobsInfos hands out).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import AbstractSet, BinaryIO, Callable, Dict, Optional

from ..errors import Failed, InvalidArgument, InvalidChecksum, NoMemory, RuntimeFailure

log = logging.getLogger(__name__)

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_CHUNK = 1 << 16
TRIES = 3
FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 5.0


def retry_delay(attempt: int) -> float:
    """Seconds to wait after failed try number ``attempt`` (0-based): 1 s doubling, at most 5 s."""
    return min(FIRST_RETRY_DELAY * float(2 ** attempt), MAX_RETRY_DELAY)


class _Broken(Exception):
    """A download that may work when tried again (connection lost, timeout, server error)."""


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<64 hex>`` digest; anything else is an InvalidArgument."""
    match = _DIGEST_RE.fullmatch(digest)
    if match is None:
        raise InvalidArgument(f"unsupported blob digest {digest!r}: expected sha256:<64 hex digits>")
    return match.group(1)


class BlobStore:
    def __init__(self, root: Path, *, timeout: float = 60.0, tries: int = TRIES,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.root = root
        self._timeout = timeout
        self._tries = max(1, tries)
        self._sleep = sleep
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

    def remove_partials(self, except_for: AbstractSet[str] = frozenset()) -> None:
        """Remove the partial downloads of fetches that died with the agent (not ``except_for``'s)."""
        for path in (self.root / "partial").iterdir():
            if f"sha256:{path.name}" not in except_for:
                with contextlib.suppress(OSError):
                    path.unlink()

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
            self._download_with_retries(url, partial, size)
            self._verify(partial, digest, size)
            os.replace(partial, final)
        except OSError as err:
            self._discard(partial)
            if err.errno == errno.ENOSPC:
                raise NoMemory(f"not enough space: disk full writing blob {digest_hex(digest)[:12]}") from err
            raise RuntimeFailure.from_os_error(err, f"blob {digest}") from err
        except BaseException:
            self._discard(partial)
            raise
        return final

    @staticmethod
    def _discard(partial: Path) -> None:
        with contextlib.suppress(OSError):
            partial.unlink()

    def _download_with_retries(self, url: str, partial: Path, size: Optional[int]) -> None:
        for attempt in range(self._tries):
            try:
                self._download(url, partial, size)
                return
            except _Broken as err:
                if attempt + 1 >= self._tries:
                    raise Failed(f"download failed after {self._tries} tries: {err} ({url})") from err
                delay = retry_delay(attempt)
                log.warning("download of %s broke (%s): try %d of %d in %.0f s, resuming", url, err,
                            attempt + 2, self._tries, delay)
                self._sleep(delay)

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
                # http.client returns b"" instead of raising IncompleteRead when a connection
                # closes before Content-Length bytes came (read with a size): check ourselves.
                remaining = getattr(response, "length", None)
                if remaining:
                    raise _Broken(f"connection closed {remaining} bytes before the end")
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:
                # Range not satisfiable: what we have is (at least) the whole blob; verify decides.
                return
            if err.code >= 500 or err.code in (408, 429):
                raise _Broken(f"HTTP {err.code} {err.reason}") from err
            raise Failed(f"download failed: HTTP {err.code} {err.reason} ({url})") from err
        except urllib.error.URLError as err:
            raise _Broken(str(err.reason)) from err
        except (http.client.HTTPException, ConnectionError, TimeoutError) as err:
            # IncompleteRead when the connection drops mid-body, a reset, a read timeout.
            raise _Broken(f"{type(err).__name__}: {err}") from err


def _copy(source: BinaryIO, target: BinaryIO) -> None:
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        target.write(chunk)
    target.flush()
    os.fsync(target.fileno())
