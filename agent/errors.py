"""The agent's named errors and their translation to the wire's ``common.v2.ErrorInfo``.

Every error the agent raises on purpose is an :class:`AosError`; its class fixes the ``aos_code``
CM sees (PROTOCOL.md, "ErrorInfo"). OS errors are translated at the boundary into
:class:`RuntimeFailure` (code 2) carrying the errno as ``exit_code``; anything unexpected becomes
``failed`` (code 1) so that a request with a reply still gets one.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from aos_sm.proto.common.v2 import common_pb2


class AosCode(enum.IntEnum):
    """``ErrorInfo.aos_code`` values, numbered as in PROTOCOL.md."""

    NONE = 0
    FAILED = 1
    RUNTIME = 2
    NO_MEMORY = 3
    OUT_OF_RANGE = 4
    NOT_FOUND = 5
    INVALID_ARGUMENT = 6
    TIMEOUT = 7
    ALREADY_EXIST = 8
    WRONG_STATE = 9
    INVALID_CHECKSUM = 10
    ALREADY_LOGGED_IN = 11
    NOT_SUPPORTED = 12
    EOF = 13
    CANCELED = 14


class AosError(Exception):
    """Base of the agent's errors. ``str(error)`` is the human-readable message sent to CM."""

    aos_code: ClassVar[int] = AosCode.FAILED
    exit_code: int = 0

    def __init__(self, message: str, *, exit_code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def to_error_info(self) -> common_pb2.ErrorInfo:
        return common_pb2.ErrorInfo(
            aos_code=int(self.aos_code), exit_code=self.exit_code, message=self.message
        )


class Failed(AosError):
    aos_code = AosCode.FAILED


class RuntimeFailure(AosError):
    """A system call failed; ``exit_code`` is its errno."""

    aos_code = AosCode.RUNTIME

    @classmethod
    def from_os_error(cls, err: OSError, context: str = "") -> RuntimeFailure:
        reason = err.strerror or str(err)
        where = f" {err.filename}" if err.filename else ""
        prefix = f"{context}: " if context else ""
        return cls(f"{prefix}{reason}{where}", exit_code=err.errno or 0)


class NoMemory(AosError):
    aos_code = AosCode.NO_MEMORY


class OutOfRange(AosError):
    aos_code = AosCode.OUT_OF_RANGE


class NotFound(AosError):
    aos_code = AosCode.NOT_FOUND


class InvalidArgument(AosError):
    aos_code = AosCode.INVALID_ARGUMENT


class Timeout(AosError):
    aos_code = AosCode.TIMEOUT


class AlreadyExist(AosError):
    aos_code = AosCode.ALREADY_EXIST


class WrongState(AosError):
    aos_code = AosCode.WRONG_STATE


class InvalidChecksum(AosError):
    aos_code = AosCode.INVALID_CHECKSUM


class NotSupported(AosError):
    aos_code = AosCode.NOT_SUPPORTED


class Canceled(AosError):
    aos_code = AosCode.CANCELED


class ConfigError(InvalidArgument):
    """A bad value in the SM's own configuration file; the CLI exits with code 2 on it.

    ``key`` is the offending key path (e.g. ``monitoring.pollPeriod``); the message names it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class ItemConfigError(InvalidArgument):
    """A bad value in an image's Aos item config; the instance fails with ``invalidArgument``.

    ``key`` is the offending key path as the item config spells it (``quotas.ramLimit``); the
    message starts with it, since CM keeps only the first 64 characters.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"item config {key}: {message}")
        self.key = key


class ResourceUnavailable(NotFound):
    """A resource the node's resources config offers but this node cannot give (a missing
    device or group): the start fails with ``notFound`` and CM also gets a ResourceAllocateAlert
    naming ``resource``."""

    def __init__(self, resource: str, message: str) -> None:
        super().__init__(message)
        self.resource = resource


def error_info_ok() -> common_pb2.ErrorInfo:
    """The ``error`` the SM sends on success: code 0, no message (PROTOCOL.md always fills it)."""
    return common_pb2.ErrorInfo(aos_code=int(AosCode.NONE), exit_code=0, message="")


def error_info_from_exception(exc: BaseException) -> common_pb2.ErrorInfo:
    """Translate any exception into the ``ErrorInfo`` CM receives."""
    if isinstance(exc, AosError):
        return exc.to_error_info()
    if isinstance(exc, OSError):
        return RuntimeFailure.from_os_error(exc).to_error_info()
    if isinstance(exc, MemoryError):
        return NoMemory("out of memory").to_error_info()
    message = str(exc) or type(exc).__name__
    return Failed(f"{type(exc).__name__}: {message}").to_error_info()
