"""What to do when a connect fails or the stream ends, by its gRPC status code: pure data.

Modelled on python-api-core's ``should_recover`` (``bidi.py``/``retry``): a predicate on the
status code decides whether an error is transient. The SM is a daemon with nothing to do
without CM, so it never gives up: a *non*-recoverable code is still retried, but at the cap
pace (``cmReconnectMaxTimeout``, at most ``cmReconnectTimeout``; PROTOCOL.md "Session") and
reported as a configuration problem, since hammering a CM that refuses our credentials or does
not serve ``servicemanager.v5`` only fills its logs, and the operator must fix something on the
node. A certificate renewal still reconnects at once (``CertificatesChanged``).

The codes are named as in ``grpc.StatusCode`` (and numbered as on the wire) so that this module
does not import grpc; tests/statemachine/test_status.py checks the table against grpc's enum.
``FAILED_PRECONDITION`` is also what the gRPC adapter reports for a local problem found before
any packet leaves (certificate or key unreadable).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Dict, Tuple, Union


class Pace(Enum):
    """How soon the next attempt comes."""

    BACKOFF = "backoff"  # the jittered, growing backoff from cmReconnectTimeout
    CAP = "cap"  # every attempt waits the backoff's cap: nothing changes by retrying sooner


class Problem(Enum):
    """How a failure is reported: in the log, in systemd STATUS=, in the operator's eyes."""

    TRANSIENT = "transient"  # network, CM restarting: a warning per session
    OVERLOAD = "overload"  # CM is busy or a message too large: slow down, a warning per session
    CONFIGURATION = "configuration"  # credentials, wrong CM or service: an error once a minute


@dataclass(frozen=True)
class Recovery:
    code: str
    number: int
    pace: Pace
    problem: Problem
    summary: str  # what the code means here, for logs and STATUS= (short)
    hint: str = ""  # what an operator should check, for configuration problems

    @property
    def configuration_problem(self) -> bool:
        return self.problem is Problem.CONFIGURATION


# grpc.StatusCode names and their wire numbers (grpc/__init__.py, status.proto).
STATUS_CODES: Dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

_T, _O, _C = Problem.TRANSIENT, Problem.OVERLOAD, Problem.CONFIGURATION
_B, _CAP = Pace.BACKOFF, Pace.CAP
_CHECK_CM = "check cmServerURL points at a CM serving servicemanager.v5"
# Both credential sources: files (certFile/keyFile) or, with iamPublicServerURL, IAM's certStorage.
_CHECK_CERTS = "check the client certificate (certFile/keyFile, or IAM's certStorage), caCert, and that CM knows this node"

# code -> (pace, problem, summary, hint)
_POLICY: Dict[str, Tuple[Pace, Problem, str, str]] = {
    # CM returned from RegisterSM (it restarts, or drops nodes on shutdown): reconnect.
    "OK": (_B, _T, "CM ended the stream", ""),
    # We cancel our own calls on close; CM cancels on shutdown.
    "CANCELLED": (_B, _T, "stream cancelled", ""),
    # Transport-level surprises (a reset without status) surface as UNKNOWN.
    "UNKNOWN": (_B, _T, "stream failed", ""),
    # CM refused what we sent: retrying the same registration at full speed changes nothing.
    "INVALID_ARGUMENT": (_CAP, _C, "CM rejected our messages", "check nodeId and the SMInfo limits"),
    # Keepalive timeout or a connect that did not finish in time: a network problem.
    "DEADLINE_EXCEEDED": (_B, _T, "CM did not answer in time", ""),
    "NOT_FOUND": (_CAP, _C, "CM does not know this node or service", _CHECK_CM),
    # CM still holds our previous stream (a restart faster than it noticed): it goes away.
    "ALREADY_EXISTS": (_B, _T, "CM still holds a session of this node", ""),
    "PERMISSION_DENIED": (_CAP, _C, "CM denied this node", _CHECK_CERTS),
    # Message too large or CM out of resources: going slower is the only help.
    "RESOURCE_EXHAUSTED": (_CAP, _O, "CM is out of resources or a message was too large", ""),
    # Local (credentials unreadable) or CM not in a state to take nodes.
    "FAILED_PRECONDITION": (_CAP, _C, "cannot connect as configured", _CHECK_CERTS),
    "ABORTED": (_B, _T, "CM aborted the stream", ""),
    "OUT_OF_RANGE": (_CAP, _C, "CM found a value out of range", "check the SM's configuration"),
    # The peer is not a CM of this contract revision: wrong address or wrong service.
    "UNIMPLEMENTED": (_CAP, _C, "CM does not serve servicemanager.v5 RegisterSM", _CHECK_CM),
    # HTTP/2 RST_STREAM and CM bugs: api-core retries INTERNAL with RST_STREAM; we retry all.
    "INTERNAL": (_B, _T, "CM or the transport failed internally", ""),
    "UNAVAILABLE": (_B, _T, "CM unreachable", ""),
    "DATA_LOSS": (_B, _T, "data lost on the stream", ""),
    "UNAUTHENTICATED": (_CAP, _C, "CM rejected this node's credentials", _CHECK_CERTS),
}

_BY_NUMBER = {number: name for name, number in STATUS_CODES.items()}


def recovery_for(code: Union[str, int]) -> Recovery:
    """The policy for a status code (its name or its number); an unknown code counts as UNKNOWN."""
    if isinstance(code, int):
        name = _BY_NUMBER.get(code, "UNKNOWN")
    else:
        name = code if code in _POLICY else "UNKNOWN"
    pace, problem, summary, hint = _POLICY[name]
    return Recovery(name, STATUS_CODES[name], pace, problem, summary, hint)


def should_recover(code: Union[str, int]) -> bool:
    """api-core's predicate: True for a transient failure, retried with the normal backoff."""
    return recovery_for(code).pace is Pace.BACKOFF


def describe(recovery: Recovery, reason: str = "") -> str:
    """One log line for a failure: code, what it means here, what to check, the peer's words."""
    text = f"{recovery.code}: {recovery.summary}"
    if recovery.configuration_problem:
        text = f"configuration problem: {text}; {recovery.hint}"
    return f"{text} ({reason})" if reason else text
