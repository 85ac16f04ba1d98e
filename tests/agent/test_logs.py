"""Log requests through the real contract CM: the agent reads a syslog file and streams parts."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Callable, List

from contract_cm import ContractCM

from agent_helpers import registered

from aos_sm.agent.app import Agent


def _line(second: int) -> bytes:
    # rsyslog's precise format carries year and zone, so the test holds in any local time zone.
    return b"2026-11-25T10:%02d:%02d.000000+00:00 node app[7]: event %d %s\n" % (
        second // 60, second % 60, second, b"y" * 60)


def _reply(session: Any, correlation_id: str) -> List[Any]:
    parts = [session.wait_for("log", 20, lambda m: m.correlation_id == correlation_id)]
    while parts[-1].status == "ok" and parts[-1].part < parts[-1].part_count:
        parts.append(session.wait_for("log", 20, lambda m: m.correlation_id == correlation_id))
    return parts


def _content(parts: List[Any]) -> bytes:
    assert [(p.part, p.part_count, p.status, p.error.aos_code) for p in parts] == [
        (n, len(parts), "ok", 0) for n in range(1, len(parts) + 1)]
    data = [gzip.decompress(p.data) for p in parts]
    assert all(len(d) <= 1024 for d in data)
    return b"".join(data)


def test_system_log_requests_are_answered_concurrently_each_with_its_correlation_id(
    contract_cm: ContractCM, start_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    messages = tmp_path / "messages"
    messages.write_bytes(b"".join(_line(second) for second in range(600)))
    start_agent(contract_cm.address, logging={"systemLog": str(messages), "maxPartSize": 1024})
    session = registered(contract_cm)
    session.send("system_log_request", {"correlationId": "first", "from": "2026-11-25T10:00:10Z",
                                        "till": "2026-11-25T10:01:00Z"})
    session.send("system_log_request", {"correlationId": "second", "from": "2026-11-25T10:05:00Z"})
    session.send("system_log_request", {"correlationId": "nothing", "till": "2026-11-25T09:00:00Z"})
    assert _content(_reply(session, "first")) == b"".join(_line(second) for second in range(10, 61))
    assert _content(_reply(session, "second")) == b"".join(_line(second) for second in range(300, 600))
    empty = _reply(session, "nothing")
    assert [(p.part, p.part_count, p.status) for p in empty] == [(1, 1, "empty")]
    assert not session.closed.is_set()
