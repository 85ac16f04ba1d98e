"""Waiting for IAM before CM, with the in-memory fake of the IAM port and an injected clock."""

from __future__ import annotations

import json
import logging
import threading
from typing import List

import pytest

from iam_helpers import FakeIamClient

from aos_sm.agent.config import parse_config
from aos_sm.agent.iam.port import IamNodeInfo
from aos_sm.agent.iam.startup import wait_for_node_info

CONFIG = parse_config(json.dumps({"tlsMode": "plaintext", "iamPublicServerURL": "127.0.0.1:9",
                                  "cmReconnectTimeout": "20ms", "cmReconnectMaxTimeout": "20ms"}))


def test_every_attempt_is_in_status_and_the_log_has_one_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeIamClient(IamNodeInfo(node_id="n1"), failures=5)
    statuses: List[str] = []
    clock = iter([0.0, 10.0, 30.0, 61.0, 70.0])  # the 4th failure is a minute after the 1st
    caplog.set_level(logging.WARNING, "aos_sm.agent.iam.startup")
    info = wait_for_node_info(client, CONFIG, threading.Event(), statuses.append, monotonic=lambda: next(clock))
    assert info == IamNodeInfo(node_id="n1") and client.calls == 6
    assert [s.split(" (attempt ")[1][:1] for s in statuses] == ["1", "2", "3", "4", "5"]
    assert all(s.startswith("waiting for IAM at 127.0.0.1:9 before contacting CM: connection refused") for s in statuses)
    assert [r.getMessage().split(" (attempt ")[1][:1] for r in caplog.records] == ["1", "4"]


def test_a_stop_while_waiting_returns_none_and_asks_no_more() -> None:
    client = FakeIamClient(IamNodeInfo(node_id="n1"), failures=100)
    stop = threading.Event()
    statuses: List[str] = []

    def status(text: str) -> None:
        statuses.append(text)
        stop.set()

    assert wait_for_node_info(client, CONFIG, stop, status) is None
    assert client.calls == 1 and len(statuses) == 1
