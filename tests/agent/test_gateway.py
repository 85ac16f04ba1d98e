"""The gateway and dispatcher over the in-memory transport (tests/agent/fake_transport.py).

The agent is the real one (build_agent: probes, store, dispatcher, gateway threads); only the
network is replaced, so these tests can end streams with any status code, refuse connects and
push any bytes. tests/agent/test_gateway_grpc.py runs the same gateway over real gRPC.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest

from agent_helpers import make_config
from fake_transport import FakeCM, FakeStream

from aos_sm.agent.app import Agent, build_agent
from aos_sm.agent.dispatch import Dispatcher
from aos_sm.agent.errors import NotFound, WrongState
from aos_sm.agent.gateway import Gateway, UnknownEffect
from aos_sm.agent.incoming import Undecodable, parse_frame, string_field
from aos_sm.agent.messages import core_alert
from aos_sm.agent.outbox import Outbox
from aos_sm.agent.sdnotify import session_status
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2
from aos_sm.statemachine import State
from aos_sm.statemachine.events import CertificatesChanged

INVALID_ARGUMENT, ALREADY_EXIST, WRONG_STATE = 6, 8, 9
In = sm_pb2.SMIncomingMessages
CONFIG = json.dumps({"nodeGroupSubject": {"codename": "main"}})


@pytest.fixture
def cm() -> FakeCM:
    return FakeCM()


@pytest.fixture
def start_agent(start_agent: Callable[..., Agent]) -> Callable[..., Agent]:
    """``start(cm, **config)``: conftest's agent, over the in-memory transport ``cm``."""
    return lambda cm, **extra: start_agent("fake-cm:1", transport=cm, **extra)


def registered(cm: FakeCM, index: int = -1) -> FakeStream:
    stream = cm.wait_stream(index)
    assert stream.kinds()[:2] == ["sm_info", "node_instances_status"]
    return stream


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition the gateway's threads make true (they notify nothing a test can wait on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.01)


def field(number: int, data: bytes) -> bytes:
    """One length-delimited field (data shorter than 128 bytes)."""
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


# Registration and commands.


def test_registration_sends_sm_info_then_node_instances_status_and_syncs(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(cm)
    stream = registered(cm)
    assert stream.sent[0].sm_info.node_id == "node-test"
    assert agent.gateway.wait_synced(1)
    assert agent.gateway.state in (State.Synced, State.Processing)
    assert agent.gateway.problem is None


def test_malformed_config_and_invalid_semver_get_errors_and_the_stream_stays_up(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(cm)
    stream = registered(cm)
    stream.push(In(check_node_config=sm_pb2.CheckNodeConfig(node_config='{"version": ', version="1.0.0")))
    malformed = stream.wait_for("node_config_status")
    assert malformed.error.aos_code == INVALID_ARGUMENT and malformed.error.message
    assert (malformed.state, malformed.version) == ("absent", "1.0.0")

    stream.push(In(set_node_config=sm_pb2.SetNodeConfig(node_config=CONFIG, version="one.two")))
    bad_version = stream.wait_for("node_config_status")
    assert bad_version.error.aos_code == INVALID_ARGUMENT and "one.two" in bad_version.error.message

    stream.push(In(set_node_config=sm_pb2.SetNodeConfig(node_config=CONFIG, version="2.0.0")))
    assert stream.wait_for("node_config_status").error.aos_code == 0
    stream.push(In(set_node_config=sm_pb2.SetNodeConfig(node_config=CONFIG, version="2.0.0")))
    assert stream.wait_for("node_config_status").error.aos_code == ALREADY_EXIST
    stream.push(In(set_node_config=sm_pb2.SetNodeConfig(node_config=CONFIG, version="1.9.0")))
    lower = stream.wait_for("node_config_status")
    assert (lower.error.aos_code, lower.state) == (WRONG_STATE, "installed")
    assert not stream.ended.is_set() and len(cm.streams) == 1


def test_node_config_survives_an_agent_restart(cm: FakeCM, start_agent: Callable[..., Agent]) -> None:
    first = start_agent(cm)
    stream = registered(cm)
    stream.push(In(set_node_config=sm_pb2.SetNodeConfig(node_config=CONFIG, version="3.1.4")))
    assert stream.wait_for("node_config_status").error.aos_code == 0
    assert first.stop()
    start_agent(cm)
    again = registered(cm, index=1)
    again.push(In(get_node_config_status=sm_pb2.GetNodeConfigStatus()))
    status = again.wait_for("node_config_status")
    assert (status.state, status.version) == ("installed", "3.1.4")


# Frames that do not decode: one message lost at most, never the stream.


def test_an_unknown_oneof_field_is_ignored_and_the_stream_stays_up(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(cm)
    stream = registered(cm)
    # Field 42 of SMIncomingMessages: a kind a newer CM might send; valid protobuf, unknown to us.
    stream.push(bytes([0xD2, 0x02, 0x03]) + b"abc")
    stream.push(In(get_node_config_status=sm_pb2.GetNodeConfigStatus()))
    assert stream.wait_for("node_config_status").state == "absent"
    assert not stream.ended.is_set() and len(cm.streams) == 1


def test_a_garbage_frame_is_a_core_alert_and_the_stream_stays_up(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(cm)
    stream = registered(cm)
    stream.push(b"\xff\xff\xff\xff\xff")
    # Other CoreAlerts may come first (a runtime that cannot run under qemu-user, for one).
    alert = stream.wait_for("alert", predicate=lambda m: "undecodable" in m.core_alert.message)
    assert alert.core_alert.message == "undecodable frame from CM: not a protobuf message: truncated varint at byte 5"
    stream.push(In(get_node_config_status=sm_pb2.GetNodeConfigStatus()))
    assert stream.wait_for("node_config_status").error.aos_code == 0
    assert not stream.closed_by_agent.is_set() and agent.gateway.sync_count == 1


def test_a_node_config_that_is_not_utf8_gets_invalid_argument_naming_the_field(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(cm)
    stream = registered(cm)
    # SetNodeConfig{node_config: b"{\xff}", version: "4.0.0"}: protobuf refuses the string.
    stream.push(field(3, field(1, b"{\xff}") + field(2, b"4.0.0")))
    status = stream.wait_for("node_config_status")
    assert (status.state, status.version, status.error.aos_code) == ("absent", "4.0.0", INVALID_ARGUMENT)
    assert status.error.message.startswith("node_config: not valid UTF-8")
    assert stream.wait_for("alert", predicate=lambda m: "SetNodeConfig" in m.core_alert.message)
    stream.push(In(get_node_config_status=sm_pb2.GetNodeConfigStatus()))
    assert stream.wait_for("node_config_status").state == "absent"  # nothing was stored


def test_an_undecodable_log_request_gets_an_error_part_for_its_correlation_id(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(cm)
    stream = registered(cm)
    # InstanceLogRequest{correlation_id: "log-9", filter: {item_id: b"\xfe"}}
    stream.push(field(6, field(1, b"log-9") + field(2, field(1, b"\xfe"))))
    part = stream.wait_for("log", predicate=lambda m: m.correlation_id == "log-9")
    assert (part.status, part.part, part.part_count, part.error.aos_code) == ("error", 0, 0, INVALID_ARGUMENT)
    assert part.error.message.startswith("filter.item_id: not valid UTF-8")


def test_one_undecodable_instance_fails_alone_and_the_rest_of_its_batch_runs(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(cm)
    stream = registered(cm)
    good = sm_pb2.InstanceInfo(instance=common_pb2.InstanceIdent(item_id="good", subject_id="s"),
                               version="1.0.0", runtime_id="no-such-runtime")
    bad_ident = common_pb2.InstanceIdent(item_id="bad", subject_id="s").SerializeToString()
    bad = field(1, bad_ident) + field(12, field(1, b"\x9a\x99"))  # network_id not UTF-8
    batch = field(1, bad) + field(1, good.SerializeToString())
    stream.push(field(4, batch))
    failed = stream.wait_for("update_instances_status", predicate=lambda m: m.instances[0].instance.item_id == "bad")
    assert [(s.state, s.error.aos_code) for s in failed.instances] == [("failed", INVALID_ARGUMENT)]
    # The good instance is the launcher's: it fails here only because its runtime is unknown.
    started = stream.wait_for("update_instances_status",
                              predicate=lambda m: m.instances[0].instance.item_id == "good"
                              and m.instances[0].state == "failed")
    assert started.instances[0].error.aos_code != INVALID_ARGUMENT
    stream.wait_for("node_instances_status", predicate=lambda m: [i.instance.item_id for i in m.instances] == ["good"])
    assert not stream.ended.is_set()


def test_parse_frame_names_the_kind_and_the_field_that_does_not_decode() -> None:
    parsed = parse_frame(field(2, field(1, b"ok") + field(2, b"\xc3")))
    assert isinstance(parsed, Undecodable)
    assert (parsed.kind, parsed.why) == ("check_node_config", "version: not valid UTF-8 (byte 0)")
    assert string_field(parsed.payload, 1) == "ok"
    truncated = parse_frame(field(4, b"\x0a\x09abc"))
    assert isinstance(truncated, Undecodable) and truncated.kind == "update_instances"
    assert "length 9 runs past the end" in truncated.why
    assert isinstance(parse_frame(b""), In)  # an empty frame is an empty message: no kind
    # A frame of 150,000 one-field varints, cut short: the walk gives up instead of grinding.
    flood = parse_frame(b"\x08\x00" * 150_000 + b"\xff")
    assert isinstance(flood, Undecodable) and flood.why == "not a protobuf message: more than 100000 fields"


class _Sent:
    def __init__(self) -> None:
        self.messages: List[sm_pb2.SMOutgoingMessages] = []

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        self.messages.append(message)


def test_core_alerts_about_undecodable_frames_are_one_a_minute_per_kind() -> None:
    now = [0.0]
    sent = _Sent()
    unused: Any = None
    dispatcher = Dispatcher(sender=sent, node_config=unused, launcher=unused, logs=unused,
                            monitoring=unused, network=unused, cloud=unused, clock=lambda: now[0])
    for _ in range(50):
        dispatcher.handle_frame(b"\xff")
        dispatcher.handle_frame(field(9, b"\xff"))  # ConnectionStatus: no reply, an alert only
    now[0] = 60.0
    dispatcher.handle_frame(b"\xff")
    alerts = [m.alert.core_alert.message for m in sent.messages]
    assert len(alerts) == 3
    assert alerts[0].startswith("undecodable frame from CM")
    assert alerts[1].startswith("undecodable ConnectionStatus from CM")
    assert alerts[2].endswith("(49 more like it since the last report)")


# Reconnects and the status policy.


def test_a_stream_ended_by_cm_re_registers_on_a_new_stream(cm: FakeCM, start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(cm)
    first = registered(cm)
    first.end("UNAVAILABLE", "CM restarting")
    second = registered(cm, index=1)
    assert second.sent[0].sm_info.node_id == "node-test"
    assert agent.gateway.wait_synced(2)
    assert ("StreamBroken", "Backoff") in agent.gateway.history


def test_a_refused_credential_is_a_configuration_problem_logged_once_and_in_status(
    cm: FakeCM, start_agent: Callable[..., Agent], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aos_sm.agent.gateway")
    cm.fail_next_connects("UNAUTHENTICATED", "certificate expired", count=2)
    agent = start_agent(cm)
    registered(cm)  # the third attempt gets through
    problems = [r.getMessage() for r in caplog.records if "configuration problem" in r.getMessage()]
    assert len(problems) == 1 and "UNAUTHENTICATED" in problems[0] and "certificate expired" in problems[0]
    assert [r.levelname for r in caplog.records if "configuration problem" in r.getMessage()] == ["ERROR"]
    assert agent.gateway.wait_synced(1)
    assert agent.gateway.problem is None


def test_the_last_failure_shows_in_systemd_status_until_a_session_syncs(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    cm.fail_next_connects("FAILED_PRECONDITION", "cannot read keyFile", count=1000, local=True)
    agent = start_agent(cm)
    wait_until(lambda: agent.gateway.problem is not None)
    problem = agent.gateway.problem
    assert problem is not None and problem.code == "FAILED_PRECONDITION"
    status = session_status("Backoff", "cm:8093", problem)
    assert status.startswith("configuration problem: CM at cm:8093 answered FAILED_PRECONDITION")
    assert cm.streams == []


def test_alerts_sent_while_disconnected_follow_the_next_registration(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(cm)
    first = registered(cm)
    assert agent.gateway.wait_synced(1)
    cm.fail_next_connects("UNAVAILABLE", "CM down", count=1, local=True)
    first.end("UNAVAILABLE", "CM down")
    wait_until(lambda: not agent.outbox.live)  # the outbox detaches when the session closes
    for number in range(3):
        agent.outbox.send(core_alert(f"during outage {number}"))
    second = registered(cm, index=1)
    alerts = [second.wait_for("alert").core_alert.message for _ in range(3)]
    assert alerts == ["during outage 0", "during outage 1", "during outage 2"]
    kinds = second.kinds()
    assert kinds.index("node_instances_status") < kinds.index("alert")


# Blob URLs, and the effect interpreter.


def test_blob_urls_go_through_the_live_session_and_fail_clearly_without_one(
    cm: FakeCM, start_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    idle = build_agent(make_config(tmp_path, "fake-cm:1"), transport=FakeCM())
    with pytest.raises(WrongState, match="not connected"):
        idle.gateway.blob_urls(["sha256:a"])
    agent = start_agent(cm)
    stream = registered(cm)
    assert agent.gateway.wait_synced(1)
    cm.blob_urls.update({"sha256:b": "http://blobs/b", "sha256:a": "file:///blobs/a"})
    assert agent.gateway.blob_urls(["sha256:b", "sha256:a"]) == ["http://blobs/b", "file:///blobs/a"]
    with pytest.raises(NotFound, match="sha256:zzz"):
        agent.gateway.blob_urls(["sha256:zzz"])
    cm.fail_next_connects("UNAVAILABLE", "CM down", count=1000, local=True)
    stream.end("UNAVAILABLE", "CM down")
    wait_until(lambda: agent.gateway.state is State.Backoff)
    with pytest.raises(WrongState, match="not connected"):
        agent.gateway.blob_urls(["sha256:a"])


def test_the_effect_interpreter_raises_on_an_effect_it_does_not_know(tmp_path: Path) -> None:
    agent = build_agent(make_config(tmp_path, "fake-cm:1"), transport=FakeCM())
    with pytest.raises(UnknownEffect, match="cannot run effect"):
        agent.gateway._run(object())  # type: ignore[arg-type]


def test_new_certificates_close_the_stream_and_register_again_at_once(
    cm: FakeCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(cm)
    first = registered(cm)
    assert agent.gateway.wait_synced(1)
    agent.gateway.feed(CertificatesChanged())
    second = registered(cm, index=1)
    assert first.closed_by_agent.is_set() and not second.closed_by_agent.is_set()
    assert agent.gateway.wait_synced(2)
    assert ("CertificatesChanged", "Backoff") in agent.gateway.history


def test_stop_closes_the_stream_and_the_readers_late_end_is_ignored(
    cm: FakeCM, tmp_path: Path
) -> None:
    agent = build_agent(make_config(tmp_path, "fake-cm:1"), transport=cm)
    agent.start()
    stream = registered(cm)
    assert agent.gateway.wait_synced(1)
    assert agent.stop(timeout=5.0)
    assert stream.closed_by_agent.is_set()
    assert all(connection.closed for connection in cm.connections)
    assert agent.gateway.state is State.Disconnected
    wait_until(lambda: agent.gateway.history[-1] == ("StreamBroken", "Disconnected"))


def test_a_registration_that_cannot_be_built_is_retried(cm: FakeCM, tmp_path: Path) -> None:
    calls: List[int] = []

    def registration() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("resources file vanished")
        return sm_pb2.SMInfo(node_id="node-retry"), sm_pb2.NodeInstancesStatus()

    gateway = Gateway(make_config(tmp_path, "fake-cm:1"), registration=registration,
                      handler=lambda frame: None, outbox=Outbox(), transport=cm)
    gateway.start()
    try:
        stream = registered(cm)
        assert stream.sent[0].sm_info.node_id == "node-retry"
        assert len(calls) == 2 and len(cm.connections) == 2
    finally:
        assert gateway.stop(timeout=5.0)
