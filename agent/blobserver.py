"""An HTTP server that serves an image's blobs by digest, the way CM's blob URLs do.

The simulator answers GetBlobsInfos with these URLs; the agent downloads from them exactly as
it does from a real CM's (sha256 and size checked). Only the digests it was given are served.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

from .demo_image import Blob

PREFIX = "/blobs/sha256/"


class _BlobHandler(http.server.BaseHTTPRequestHandler):
    server: "_BlobHTTPServer"

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        blob = self.server.blobs.get(self.path[len(PREFIX):]) if self.path.startswith(PREFIX) else None
        if blob is None:
            self.send_error(404, "no such blob")
            return
        size = len(blob) if isinstance(blob, bytes) else blob.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not body:
            return
        if isinstance(blob, bytes):
            self.wfile.write(blob)
        else:
            with blob.open("rb") as source:
                shutil.copyfileobj(source, self.wfile)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # the simulator says what it serves; one line per download would drown that


class _BlobHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    blobs: Dict[str, Blob]


class _BlobHTTPServer6(_BlobHTTPServer):
    address_family = socket.AF_INET6


class BlobServer:
    """Serves ``blobs`` (digest -> bytes or file) at ``http://HOST:PORT/blobs/sha256/<hex>``.

    ``host`` is the address to bind; ``url_host`` the name put in URLs (a wildcard address
    cannot be connected to, so it defaults to this machine's name there)."""

    def __init__(self, host: str = "127.0.0.1", url_host: Optional[str] = None) -> None:
        bind = host.strip("[]")
        self._server = (_BlobHTTPServer6 if ":" in bind else _BlobHTTPServer)((bind, 0), _BlobHandler)
        self._server.blobs = {}
        if url_host is None:
            url_host = socket.getfqdn() if bind in ("0.0.0.0", "::", "") else bind
        self._base = f"http://{'[' + url_host + ']' if ':' in url_host else url_host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="cmsim-blobs", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        address: Tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        return int(address[1])

    def url(self, digest: str) -> str:
        return f"{self._base}{PREFIX}{digest.split(':', 1)[1]}"

    def publish(self, blobs: Dict[str, Blob]) -> Dict[str, str]:
        """Serve ``blobs`` from now on; digest -> URL."""
        for digest, blob in blobs.items():
            self._server.blobs[digest.split(":", 1)[1]] = blob
        return {digest: self.url(digest) for digest in blobs}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
