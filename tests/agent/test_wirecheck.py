"""wirecheck: every value from CM checked with the wire's own ranges, before anything is stored.

Decoded InstanceInfo checks, the raw-bytes walker (what protobuf would truncate or refuse), the
per-entry decoding of an UpdateInstances that does not decode whole, and the dispatcher handing
the launcher only what passed while each refused entry gets its status.
"""

from __future__ import annotations

from typing import Any, List

import pytest

from aos_sm.agent.cloud import CloudConnection
from aos_sm.agent.dispatch import Dispatcher
from aos_sm.agent.errors import InvalidArgument
from aos_sm.agent.wirecheck import (
    MAX_INSTANCE_INDEX,
    check_instance_info,
    check_update_instances,
    find_wire_problem,
    update_instances_from_bytes,
)
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


def ident(item: str = "svc", subject: str = "subj", index: int = 0, kind: int = 0) -> common_pb2.InstanceIdent:
    return common_pb2.InstanceIdent(item_id=item, subject_id=subject, instance=index, type=kind)


def info(**fields: Any) -> sm_pb2.InstanceInfo:
    message = sm_pb2.InstanceInfo(instance=ident(), version="1.0.0", manifest_digest="sha256:" + "0" * 64,
                                  runtime_id="rt", uid=5000, gid=5000)
    for name, value in fields.items():
        if name == "instance":
            message.instance.CopyFrom(value)
        elif name == "env_vars":
            message.env_vars.extend(value)
        elif name == "rules":
            message.monitoring_parameters.alert_rules.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def percents(low: float, high: float, seconds: int = 1) -> sm_pb2.AlertRulePercents:
    rule = sm_pb2.AlertRulePercents(min_threshold=low, max_threshold=high)
    rule.duration.seconds = seconds
    return rule


HOSTILE = [
    (info(instance=ident(index=2**64 - 1)), "instance.instance: 18446744073709551615 is above 2^63-1"),
    (info(instance=ident(index=MAX_INSTANCE_INDEX + 1)), "instance.instance: 9223372036854775808 is above"),
    (info(instance=ident(item="")), "instance.item_id: empty"),
    (info(instance=ident(subject="")), "instance.subject_id: empty"),
    (info(instance=ident(kind=7)), "instance.type: unknown item type 7"),
    (info(uid=2**32 - 1), "uid: 4294967295 is (uid_t)-1"),
    (info(gid=2**32 - 1), "gid: 4294967295 is (uid_t)-1"),
    (info(env_vars=[sm_pb2.EnvVarInfo(name="", value="x")]), "env_vars[0].name: '' is not an env var name"),
    (info(env_vars=[sm_pb2.EnvVarInfo(name="A=B", value="x")]), "env_vars[0].name: 'A=B' is not"),
    (info(env_vars=[sm_pb2.EnvVarInfo(name="A", value="x\0y")]), "env_vars[0].value: contains NUL"),
    (info(env_vars=[sm_pb2.EnvVarInfo(name="A"), sm_pb2.EnvVarInfo(name="A")]), "env_vars[1].name: duplicate"),
    (info(storage_path="/etc"), "storage_path: absolute, escapes its directory"),
    (info(state_path="svc/../../etc/passwd"), "state_path: '..' escapes its directory"),
    (info(storage_path="a\0b"), "storage_path: contains NUL"),
    (info(storage_path="a" * 5000), "storage_path: longer than 4096 bytes"),
    (info(runtime_id="rt\0"), "runtime_id: contains NUL"),
    (info(rules=sm_pb2.AlertRules(cpu=percents(10, 1e30))),
     "monitoring_parameters.alert_rules.cpu.max_threshold: 1e+30 is not a percent"),
    (info(rules=sm_pb2.AlertRules(ram=percents(-1, 50))),
     "monitoring_parameters.alert_rules.ram.min_threshold: -1 is not a percent"),
    (info(rules=sm_pb2.AlertRules(ram=percents(float("nan"), 50))),
     "monitoring_parameters.alert_rules.ram.min_threshold: nan is not"),
    (info(rules=sm_pb2.AlertRules(cpu=percents(60, 50))),
     "monitoring_parameters.alert_rules.cpu.min_threshold: 60 is above max"),
    (info(rules=sm_pb2.AlertRules(cpu=percents(1, 2, seconds=-5))),
     "monitoring_parameters.alert_rules.cpu.duration: -5 s is out of range"),
    (info(rules=sm_pb2.AlertRules(download=sm_pb2.AlertRulePoints(min_threshold=9, max_threshold=1))),
     "monitoring_parameters.alert_rules.download.min_threshold: 9 is above"),
    (info(rules=sm_pb2.AlertRules(partitions=[sm_pb2.PartitionAlertRule(name="", max_threshold=1)])),
     "monitoring_parameters.alert_rules.partitions[0].name: empty"),
]


@pytest.mark.parametrize(("message", "expected"), HOSTILE)
def test_each_hostile_value_is_refused_naming_the_field_first(message: sm_pb2.InstanceInfo, expected: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_instance_info(message)
    assert str(caught.value).startswith(expected)
    assert caught.value.to_error_info().aos_code == 6


def test_well_formed_values_at_the_edges_pass() -> None:
    check_instance_info(info(instance=ident(index=MAX_INSTANCE_INDEX), uid=0, gid=2**32 - 2,
                             storage_path="svc/subj/0", state_path="svc/subj/0/state.dat",
                             env_vars=[sm_pb2.EnvVarInfo(name="PATH", value="")],
                             rules=sm_pb2.AlertRules(cpu=percents(0, 100), download=sm_pb2.AlertRulePoints(
                                 min_threshold=0, max_threshold=2**64 - 1))))


def test_a_batch_is_split_in_order_and_each_refusal_carries_its_identity() -> None:
    good_a, good_b = info(instance=ident("a")), info(instance=ident("b", index=3))
    bad = info(instance=ident("bad", index=2**64 - 1), env_vars=[sm_pb2.EnvVarInfo(name="E")])
    request = sm_pb2.UpdateInstances(start_instances=[good_a, bad, good_b],
                                     stop_instances=[ident("old"), ident("", ""), ident("huge", index=2**63)])
    checked = check_update_instances(request)
    assert list(checked.request.start_instances) == [good_a, good_b]
    # An empty identity may still be stopped: an older agent may have stored one.
    assert list(checked.request.stop_instances) == [ident("old"), ident("", "")]
    assert [(s.instance.item_id, s.state, s.error.aos_code) for s in checked.rejected] == [
        ("bad", "failed", 6), ("huge", "inactive", 6)]
    assert checked.rejected[0].instance.instance == 2**64 - 1
    assert [v.name for v in checked.rejected[0].env_vars] == ["E"]


# --- raw bytes ------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field(number: int, wire_type: int, body: bytes) -> bytes:
    if wire_type == 2:
        return varint(number << 3 | 2) + varint(len(body)) + body
    return varint(number << 3 | wire_type) + body


@pytest.mark.parametrize(("extra", "expected"), [
    (field(6, 0, varint(2**32)), "uid: 4294967296 does not fit a uint32"),  # would decode as uid 0
    (field(7, 0, varint(2**40 + 5)), "gid: 1099511627781 does not fit a uint32"),
    (field(9, 2, b"\xff\xfe"), "storage_path: not UTF-8 at byte 0"),
    (field(1, 2, field(1, 2, b"ok\xc3")), "instance.item_id: not UTF-8 at byte 2"),
    (field(1, 2, field(4, 0, varint(2**40))), "instance.type: 1099511627776 does not fit an int32"),
    (field(11, 2, field(1, 2, b"\x80")), "env_vars.name: not UTF-8 at byte 0"),
    (field(8, 2, b"abc"), "priority: wire type 2 does not fit a uint64"),
    (field(9, 2, b"")[:-1] + varint(5) + b"ab", "storage_path: truncated (5 bytes announced, 2 left)"),
])
def test_raw_bytes_protobuf_would_truncate_or_refuse_are_named(extra: bytes, expected: str) -> None:
    data = info().SerializeToString() + extra
    assert find_wire_problem(sm_pb2.InstanceInfo.DESCRIPTOR, data) == expected


def test_raw_walker_accepts_what_protobuf_writes_and_skips_unknown_fields() -> None:
    message = info(env_vars=[sm_pb2.EnvVarInfo(name="A", value="ü")], storage_path="s",
                   rules=sm_pb2.AlertRules(cpu=percents(1, 2), partitions=[sm_pb2.PartitionAlertRule(name="p")]))
    message.instance.type = 1
    data = message.SerializeToString() + field(99, 2, b"\xff newer CM") + field(98, 0, varint(2**63))
    assert find_wire_problem(sm_pb2.InstanceInfo.DESCRIPTOR, data) is None
    incoming = sm_pb2.SMIncomingMessages(update_instances=sm_pb2.UpdateInstances(start_instances=[message]))
    assert find_wire_problem(sm_pb2.SMIncomingMessages.DESCRIPTOR, incoming.SerializeToString()) is None


def test_raw_walker_names_the_path_from_the_top_message() -> None:
    inner = field(1, 2, info().SerializeToString() + field(10, 2, b"\xc0"))
    data = field(4, 2, inner)
    assert find_wire_problem(sm_pb2.SMIncomingMessages.DESCRIPTOR, data) == \
        "update_instances.start_instances.state_path: not UTF-8 at byte 0"
    node_config = field(3, 2, field(1, 2, b'{"a": "\xff"}') + field(2, 2, b"1.0.0"))
    assert find_wire_problem(sm_pb2.SMIncomingMessages.DESCRIPTOR, node_config) == \
        "set_node_config.node_config: not UTF-8 at byte 7"


def test_an_update_that_does_not_decode_whole_is_taken_entry_by_entry() -> None:
    good = info(instance=ident("good")).SerializeToString()
    root_by_truncation = info(instance=ident("uid-wrap")).SerializeToString() + field(6, 0, varint(2**32))
    not_utf8 = info(instance=ident("path")).SerializeToString() + field(9, 2, b"/\xff")
    bad_ident = field(1, 2, field(1, 2, b"n\xffme") + field(2, 2, b"subj") + field(3, 0, varint(4)))
    payload = b"".join(field(1, 2, entry) for entry in (good, root_by_truncation, not_utf8, bad_ident))
    payload += field(2, 2, ident("stop-me").SerializeToString()) + field(2, 2, field(1, 2, b"\xff"))
    with pytest.raises(Exception):
        sm_pb2.UpdateInstances.FromString(payload)  # protobuf alone loses the whole batch
    checked = update_instances_from_bytes(payload)
    assert [i.instance.item_id for i in checked.request.start_instances] == ["good"]
    assert [i.item_id for i in checked.request.stop_instances] == ["stop-me"]
    assert [(s.instance.item_id, s.state, s.error.message) for s in checked.rejected] == [
        ("uid-wrap", "failed", "uid: 4294967296 does not fit a uint32"),
        ("path", "failed", "storage_path: not UTF-8 at byte 1"),
        ("n\ufffdme", "failed", "instance.item_id: not UTF-8 at byte 1"),
        ("\ufffd", "inactive", "item_id: not UTF-8 at byte 0"),
    ]
    assert checked.rejected[2].instance.instance == 4 and checked.rejected[2].instance.subject_id == "subj"


# --- the dispatcher -------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.messages: List[sm_pb2.SMOutgoingMessages] = []

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        self.messages.append(message)


class _Launcher:
    def __init__(self) -> None:
        self.requests: List[sm_pb2.UpdateInstances] = []

    def update_instances(self, request: sm_pb2.UpdateInstances) -> None:
        self.requests.append(request)

    def node_instances_status(self) -> sm_pb2.NodeInstancesStatus:
        return sm_pb2.NodeInstancesStatus()


def test_the_dispatcher_reports_refusals_and_hands_the_launcher_only_valid_entries() -> None:
    sender, launcher = _Recorder(), _Launcher()
    dispatcher = Dispatcher(sender=sender, node_config=None, launcher=launcher, logs=None,  # type: ignore[arg-type]
                            monitoring=None, network=None, cloud=CloudConnection())  # type: ignore[arg-type]
    good = info(instance=ident("good"))
    request = sm_pb2.UpdateInstances(start_instances=[info(instance=ident("", "")), good])
    dispatcher.handle(sm_pb2.SMIncomingMessages(update_instances=request))
    assert [list(r.start_instances) for r in launcher.requests] == [[good]]
    ((refused,),) = [m.update_instances_status.instances for m in sender.messages]
    assert (refused.state, refused.error.message) == ("failed", "instance.item_id: empty")


# --- an incoming message protobuf refused ---------------------------------------------------


def test_a_node_config_that_is_not_utf8_is_refused_naming_the_byte(tmp_path: Any) -> None:
    from aos_sm.agent.nodeconfig_store import NodeConfigService

    text = b'{"version": "2.0.0", "nodeGroupSubject": {"codename": "m\xff"}}'
    path = tmp_path / "aos_node.cfg"
    reply = NodeConfigService(path).set(text, "2.0.0")
    assert (reply.state, reply.version, reply.error.aos_code) == ("absent", "2.0.0", 6)
    assert reply.error.message == "node_config: not UTF-8 at byte 56 (b'\\xff')"
    assert not path.exists()


def test_an_undecodable_update_instances_is_taken_entry_by_entry() -> None:
    good = info(instance=ident("good")).SerializeToString()
    bad = info(instance=ident("bad")).SerializeToString() + field(10, 2, b"\xff")
    payload = field(1, 2, good) + field(1, 2, bad)
    with pytest.raises(Exception):
        sm_pb2.UpdateInstances.FromString(payload)
    checked = update_instances_from_bytes(payload)
    assert [i.instance.item_id for i in checked.request.start_instances] == ["good"]
    assert [(s.instance.item_id, s.error.message) for s in checked.rejected] == [
        ("bad", "state_path: not UTF-8 at byte 0")]
