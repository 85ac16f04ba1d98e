"""Node config service: the thin adapter between CM's node config requests and the stored file.

Stored file format (``nodeConfigFile``, default ``<workingDir>/aos_node.cfg``), UTF-8 JSON::

    {"formatVersion": 1, "version": "<effective version>", "nodeConfig": "<CM's JSON text>"}

``nodeConfig`` is CM's text byte for byte (so nothing is lost that this SM version ignores) and
``version`` is the effective version (the message's, when it had one). A file without a
``nodeConfig`` key is read as a bare node config JSON, which is how the reference SM stores it.

States (PROTOCOL.md): no file → ``absent``; a valid file → ``installed``; a file that cannot be
read or parsed → ``failed``, with the error reported by ``status()``. A failed file is never
deleted or overwritten except by a valid SetNodeConfig, so that a person can inspect it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Callable, List, Optional, Union

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .atomic import write_atomic
from .errors import (
    AosError,
    InvalidArgument,
    RuntimeFailure,
    error_info_from_exception,
    error_info_ok,
)
from .nodeconfig import (
    MAX_NODE_CONFIG_BYTES,
    NodeConfig,
    NodeConfigState,
    ParsedNodeConfig,
    decode_node_config_text,
    parse_node_config,
    plan_node_config,
)

_log = logging.getLogger(__name__)

STORED_FORMAT_VERSION = 1
# The wrapper adds a little to CM's text; JSON escaping can at most ~6x it, bound generously.
_MAX_STORED_BYTES = 8 * MAX_NODE_CONFIG_BYTES

NodeConfigListener = Callable[[NodeConfig], None]
# CM's node config JSON: text, or raw bytes when the request's string field was not UTF-8 (a
# transport that decodes leniently hands them on so that the request still gets its reply).
NodeConfigText = Union[str, bytes]


def encode_stored_node_config(node_config_text: str, version: str) -> bytes:
    record = {
        "formatVersion": STORED_FORMAT_VERSION,
        "version": version,
        "nodeConfig": node_config_text,
    }
    return json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"


def decode_stored_node_config(data: bytes) -> ParsedNodeConfig:
    """Parse the stored file's bytes; InvalidArgument when they are not a valid stored config."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InvalidArgument(f"stored node config is not valid JSON: {err}") from err
    if isinstance(record, dict) and "nodeConfig" in record:
        text, version = record.get("nodeConfig"), record.get("version")
        if not isinstance(text, str) or not isinstance(version, str):
            raise InvalidArgument("stored node config: nodeConfig and version must be strings")
        return parse_node_config(text, version)
    return parse_node_config(data.decode("utf-8"))


class NodeConfigService:
    """Get/Check/Set node config per PROTOCOL.md; every reply has ``error`` filled.

    Thread-safe: one re-entrant lock guards the state, and listeners run under it (so they see
    updates in order and may call :meth:`current`); a listener must therefore be quick and must
    not wait for another thread that uses this service.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.RLock()
        self._listeners: List[NodeConfigListener] = []
        self._config: Optional[NodeConfig] = None
        self._load_error: Optional[AosError] = None
        self._load()

    def _load(self) -> None:
        try:
            with self._path.open("rb") as stored:
                data = stored.read(_MAX_STORED_BYTES + 1)
        except FileNotFoundError:
            _log.info("no stored node config at %s", self._path)
            return
        except OSError as err:
            self._fail_load(RuntimeFailure.from_os_error(err, "can't read stored node config"))
            return
        if len(data) > _MAX_STORED_BYTES:
            self._fail_load(InvalidArgument(f"stored node config {self._path} is too large"))
            return
        try:
            parsed = decode_stored_node_config(data)
        except AosError as err:
            self._fail_load(err)
            return
        self._log_unknown_keys(parsed)
        self._config = parsed.config
        _log.info("stored node config version %s loaded from %s", parsed.config.version, self._path)

    def _fail_load(self, err: AosError) -> None:
        _log.error("stored node config %s is unusable (state failed): %s", self._path, err)
        self._load_error = err

    @property
    def state(self) -> str:
        with self._lock:
            if self._config is not None:
                return NodeConfigState.INSTALLED
            if self._load_error is not None:
                return NodeConfigState.FAILED
            return NodeConfigState.ABSENT

    def current(self) -> Optional[NodeConfig]:
        with self._lock:
            return self._config

    def add_listener(self, callback: NodeConfigListener) -> None:
        """Call ``callback(config)`` after each successful set."""
        with self._lock:
            self._listeners.append(callback)

    def status(self) -> sm_pb2.NodeConfigStatus:
        with self._lock:
            load_error = self._load_error if self._config is None else None
            error = load_error.to_error_info() if load_error is not None else error_info_ok()
            version = self._config.version if self._config is not None else ""
            return sm_pb2.NodeConfigStatus(state=self.state, version=version, error=error)

    def check(self, node_config: NodeConfigText, version: str) -> sm_pb2.NodeConfigStatus:
        """Validate without applying: state = current, version = requested."""
        with self._lock:
            state = self.state
            try:
                parsed = plan_node_config(self._installed_version(), node_config, version)
            except Exception as err:  # every request with a reply gets one (PROTOCOL.md)
                return self._reply(state, version, node_config, _error_info(err))
            self._log_unknown_keys(parsed)
            return self._reply(state, parsed.config.version, node_config, error_info_ok())

    def set(self, node_config: NodeConfigText, version: str) -> sm_pb2.NodeConfigStatus:
        """Validate, store atomically, then notify; state in the reply is the one before."""
        with self._lock:
            state_before = self.state
            try:
                parsed = plan_node_config(self._installed_version(), node_config, version)
                # Nothing reaches the file before it parsed: the text stored is valid UTF-8.
                self._store(decode_node_config_text(node_config), parsed.config.version)
            except Exception as err:
                _log.warning("SetNodeConfig version %r rejected: %s", version, err)
                return self._reply(state_before, version, node_config, _error_info(err))
            self._log_unknown_keys(parsed)
            self._config = parsed.config
            self._load_error = None
            _log.info("node config version %s installed", parsed.config.version)
            self._notify(parsed.config)
            return self._reply(state_before, parsed.config.version, node_config, error_info_ok())

    def _installed_version(self) -> Optional[str]:
        # A failed stored file counts as nothing installed: any valid config may replace it.
        return self._config.version if self._config is not None else None

    def _store(self, node_config: str, version: str) -> None:
        try:
            write_atomic(self._path, encode_stored_node_config(node_config, version))
        except OSError as err:
            raise RuntimeFailure.from_os_error(err, "can't store node config") from err

    def _notify(self, config: NodeConfig) -> None:
        for listener in list(self._listeners):
            try:
                listener(config)
            except Exception:  # a broken listener must not undo or fail an applied config
                _log.exception("node config listener %r failed", listener)

    @staticmethod
    def _reply(
        state: str, version: str, node_config: NodeConfigText, error: common_pb2.ErrorInfo
    ) -> sm_pb2.NodeConfigStatus:
        if not version:
            version = _json_version_or_empty(node_config)
        return sm_pb2.NodeConfigStatus(state=state, version=version, error=error)

    @staticmethod
    def _log_unknown_keys(parsed: ParsedNodeConfig) -> None:
        if parsed.unknown_keys:
            _log.warning("node config: ignoring unknown keys %s", ", ".join(parsed.unknown_keys))


def _error_info(err: Exception) -> common_pb2.ErrorInfo:
    if not isinstance(err, AosError):
        # Not a rejection we meant: a bug. CM still gets a reply; the trace goes to the log.
        _log.error("node config request failed unexpectedly", exc_info=err)
    return error_info_from_exception(err)


def _json_version_or_empty(node_config: NodeConfigText) -> str:
    """The JSON's version, for replies to a request whose message had none; best effort."""
    if len(node_config) > MAX_NODE_CONFIG_BYTES:
        return ""
    try:
        return parse_node_config(node_config).config.version
    except AosError:
        return ""
