"""nftables through libnftables: one script, one atomic transaction, no process per rule.

``nft_run_cmd_from_buffer`` parses the whole buffer and commits it as a single netlink batch, so
a change either applies completely or not at all (what `nft -f` does, without the fork and exec
that made peers shelling out per rule slow and lock-bound). Where the library is missing (a board
image with only the `nft` binary) the same script goes through one `nft -f -`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
import socket
import subprocess
import threading
from typing import Any, Dict, Optional

from ..errors import RuntimeFailure

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON in <nftables/libnftables.h>
_OUTPUT_HANDLE = 1 << 3  # NFT_CTX_OUTPUT_HANDLE: list rules with their handles (delete by handle)


def _load(library: Optional[str]) -> Any:
    """The library by its soname first: ``ctypes.util.find_library`` runs ``ldconfig -p`` in a
    child process (20 ms here), paid only where the soname is not found."""
    for name in ([library] if library else ["libnftables.so.1"]):
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    found = None if library else ctypes.util.find_library("nftables")
    if found is None:
        return None
    try:
        return ctypes.CDLL(found)
    except OSError:
        return None


class NftError(RuntimeFailure):
    """nftables refused a batch; the message is nft's own, cause first."""


_NETLINK_NETFILTER = 12  # <linux/netlink.h>


def _check_netlink() -> None:
    # libnftables (through libmnl) calls exit(3) when it cannot open its netlink socket: a kernel
    # without nf_tables (or an emulator without netfilter netlink) would end the whole agent.
    # Opening the same socket first turns that into an error the caller can report.
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER).close()
    except OSError as err:
        raise NftError(f"nftables unusable: no netfilter netlink in this kernel ({err.strerror or err})") from err


class Nft:
    """A libnftables context (or the `nft` binary): ``run`` applies a script atomically, ``query``
    lists in JSON. Thread-safe: a context is not, so calls are serialised."""

    def __init__(self, library: Optional[str] = None) -> None:
        self._lock = threading.Lock()
        self._lib: Any = None
        self._ctx: Any = None
        _check_netlink()
        lib = _load(library)
        if lib is None:
            self._binary = shutil.which("nft")
            if self._binary is None:
                raise NftError("nftables missing: neither libnftables nor the nft binary found") from None
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for function in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, function).argtypes = [ctypes.c_void_p]
        for function in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, function).argtypes = [ctypes.c_void_p]
            getattr(lib, function).restype = ctypes.c_char_p
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lib = lib
        self._binary = None

    def _call(self, script: str, flags: int) -> str:
        if self._lib is None:
            args = [str(self._binary)] + (["-j"] if flags & _OUTPUT_JSON else []) + \
                (["-a"] if flags & _OUTPUT_HANDLE else []) + ["-f", "-"]
            done = subprocess.run(args, input=script.encode(), capture_output=True, check=False)
            if done.returncode != 0:
                raise NftError(f"nftables: {done.stderr.decode(errors='replace').strip()}")
            return done.stdout.decode()
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(f"nftables: {error.strip() or 'batch refused'}")
        return output

    def run(self, script: str) -> str:
        """Apply ``script`` (nft syntax, many commands) as one transaction."""
        return self._call(script, _OUTPUT_HANDLE)

    def query(self, command: str) -> Dict[str, Any]:
        """A `list ...` command's result as nft's JSON (rules carry their handles)."""
        output = self._call(command, _OUTPUT_JSON | _OUTPUT_HANDLE)
        try:
            value = json.loads(output) if output.strip() else {"nftables": []}
        except ValueError as err:
            raise NftError(f"nftables: unreadable JSON output: {err}") from err
        if not isinstance(value, dict):
            raise NftError("nftables: JSON output is not an object")
        return value

    def close(self) -> None:
        if self._lib is not None and self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None
            self._lib = None
