"""The contract CM really speaks the wire: a bare grpc client drives it over 127.0.0.1.

The client here is as independent of aos_sm as the CM is: plain grpc channels and the classes the
Contract built from the TSV. If these pass, a failure in an agent integration test is the agent's.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any, Iterator, Optional

import grpc
import pytest
from google.protobuf import descriptor_pb2

from contract import (
    CONTRACT_PATH,
    Contract,
    ContractFileError,
    build_file_protos,
    example_commands,
    kind_of,
    length_delimited_field,
    message_to_dict,
)
from contract_cm import GET_BLOBS_INFOS, REGISTER_SM, CMFactory, CMWaitTimeout, ContractCM, SessionClosed
from tls import TLSMaterial, der_from_pem

RPC_TIMEOUT = 10.0
_END = object()


class BareSM:
    """A minimal SM: one RegisterSM stream, requests from a queue, replies read on demand."""

    def __init__(self, contract: Contract, channel: grpc.Channel) -> None:
        self.contract = contract
        self._requests: "queue.SimpleQueue[object]" = queue.SimpleQueue()
        register = channel.stream_stream(
            REGISTER_SM,
            request_serializer=contract.outgoing.SerializeToString,
            response_deserializer=contract.incoming.FromString,
        )
        # The deadline bounds every blocking next() below: a broken test fails, never hangs.
        self.responses = register(iter(self._requests.get, _END), timeout=RPC_TIMEOUT)

    def send(self, kind: str, payload: Optional[dict[str, Any]] = None) -> None:
        self._requests.put(self.contract.outgoing_message(kind, payload))

    def next_command(self) -> Any:
        return next(self.responses)

    def finish(self) -> None:
        self._requests.put(_END)


@pytest.fixture
def channel(contract_cm: ContractCM) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(contract_cm.address) as channel:
        yield channel


@pytest.fixture
def sm(contract: Contract, channel: grpc.Channel) -> Iterator[BareSM]:
    bare = BareSM(contract, channel)
    yield bare
    bare.responses.cancel()


def _field(contract: Contract, message: str, name: str) -> Any:
    return contract.pool.FindMessageTypeByName(message).fields_by_name[name]


def _is_repeated(field: Any) -> bool:
    # protobuf 7 dropped FieldDescriptor.label for is_repeated, which 3.20 does not have.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


# --- descriptors built from the TSV -------------------------------------------------------------


def test_field_numbers_come_from_the_contract(contract: Contract) -> None:
    assert _field(contract, "servicemanager.v5.SMInfo", "node_id").number == 1
    assert _field(contract, "servicemanager.v5.LogData", "part").number == 3
    oneof = contract.incoming.DESCRIPTOR.oneofs_by_name["SMIncomingMessage"]
    assert len(oneof.fields) == 10
    assert contract.incoming_kinds[0] == "get_node_config_status"
    assert contract.incoming_kinds[-1] == "update_networks"
    assert len(contract.outgoing_kinds) == 8
    alert_items = contract.message_class("servicemanager.v5.Alert").DESCRIPTOR.oneofs_by_name[
        "AlertItem"
    ]
    assert [f.name for f in alert_items.fields][0] == "system_quota_alert"


def test_types_resolve_to_enums_messages_and_well_known_types(contract: Contract) -> None:
    ident_type = _field(contract, "common.v2.InstanceIdent", "type")
    assert ident_type.enum_type.full_name == "common.v2.ItemType"
    assert ident_type.enum_type.values_by_name["COMPONENT"].number == 1
    assert _field(
        contract, "servicemanager.v5.SystemLogRequest", "from"
    ).message_type.full_name == ("google.protobuf.Timestamp")
    assert _field(
        contract, "servicemanager.v5.AlertRulePoints", "duration"
    ).message_type.full_name == ("google.protobuf.Duration")
    assert _field(contract, "servicemanager.v5.SMInfo", "runtimes").message_type.full_name == (
        "servicemanager.v5.RuntimeInfo"
    )


def _method_proto(
    contract: Contract, service: str, method: str
) -> descriptor_pb2.MethodDescriptorProto:
    # Through the file's serialized form: upb's MethodDescriptor on protobuf 4.21 has no
    # client_streaming/server_streaming attributes.
    file = contract.pool.FindServiceByName(service).file
    proto = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
    (found,) = [
        m
        for s in proto.service
        if f"{proto.package}.{s.name}" == service
        for m in s.method
        if m.name == method
    ]
    return found


def test_services_carry_streaming_flags(contract: Contract) -> None:
    register = _method_proto(contract, "servicemanager.v5.SMService", "RegisterSM")
    blobs = _method_proto(contract, "servicemanager.v5.SMService", "GetBlobsInfos")
    assert (register.input_type, register.output_type) == (
        ".servicemanager.v5.SMOutgoingMessages",
        ".servicemanager.v5.SMIncomingMessages",
    )
    assert register.client_streaming and register.server_streaming
    assert not blobs.client_streaming and not blobs.server_streaming
    assert blobs.output_type == ".servicemanager.v5.BlobsInfos"


def test_every_field_fact_of_the_tsv_is_in_the_pool(contract: Contract) -> None:
    """Rebuild each field line from the pool: the builder dropped or bent nothing."""
    facts = [
        line.split("\t")
        for line in CONTRACT_PATH.read_text().splitlines()
        if line.startswith("field\t")
    ]
    assert len(facts) > 150
    for _, message, number, name, type_name, label, oneof in facts:
        got = _field(contract, message, name)
        if got.message_type is not None:
            got_type = got.message_type.full_name
        elif got.enum_type is not None:
            got_type = got.enum_type.full_name
        else:
            got_type = descriptor_pb2.FieldDescriptorProto.Type.Name(got.type)[
                len("TYPE_") :
            ].lower()
        repeated = _is_repeated(got)
        got_oneof = got.containing_oneof.name if got.containing_oneof is not None else "-"
        assert (got.number, got_type, repeated, f"oneof={got_oneof}") == (
            int(number),
            type_name,
            label == "repeated",
            oneof,
        ), f"{message}.{name}"


def test_a_malformed_contract_is_refused_with_its_line() -> None:
    text = (
        "file\tx.proto\tpackage=x\timports=\nmessage\tx.M\n"
        "field\tx.M\t1\tf\tx.Missing\tsingular\toneof=-\n"
    )
    with pytest.raises(ContractFileError, match="unknown type x.Missing"):
        build_file_protos(text)
    with pytest.raises(ContractFileError, match="line 1"):
        build_file_protos("message\tx.M\n")


def test_nested_messages_are_built_inside_their_parent() -> None:
    text = (
        "file\tx.proto\tpackage=x\timports=\nmessage\tx.Outer\nmessage\tx.Outer.Inner\n"
        "field\tx.Outer\t1\tinner\tx.Outer.Inner\tsingular\toneof=-\n"
    )
    (file,) = build_file_protos(text)
    assert file.message_type[0].nested_type[0].name == "Inner"
    assert file.message_type[0].field[0].type_name == ".x.Outer.Inner"


# --- RegisterSM over a real socket ---------------------------------------------------------------


def test_sm_messages_arrive_decoded(contract_cm: ContractCM, sm: BareSM) -> None:
    sm.send("sm_info", {"nodeId": "node0", "runtimes": [{"runtimeId": "r1", "type": "runc"}]})
    sm.send("node_instances_status", {"instances": []})
    session = contract_cm.wait_session()
    info = session.wait_for("sm_info")
    assert info.node_id == "node0"
    assert info.runtimes[0].type == "runc"
    session.wait_for("node_instances_status")
    assert session.kinds() == ["sm_info", "node_instances_status"]
    assert message_to_dict(session.received[0])["sm_info"]["node_id"] == "node0"


def test_cm_commands_reach_the_sm(contract_cm: ContractCM, sm: BareSM) -> None:
    sm.send("sm_info", {"nodeId": "node0"})
    session = contract_cm.wait_session()
    session.send("get_node_config_status", {})
    session.send("check_node_config", {"nodeConfig": "{}", "version": "2.0.0"})
    first, second = sm.next_command(), sm.next_command()
    assert kind_of(first) == "get_node_config_status"
    assert kind_of(second) == "check_node_config"
    assert second.check_node_config.version == "2.0.0"


def test_every_cm_kind_can_be_sent(contract: Contract, contract_cm: ContractCM, sm: BareSM) -> None:
    examples = example_commands()
    assert tuple(examples) == contract.incoming_kinds  # a new kind in the contract needs an example
    sm.send("sm_info", {"nodeId": "node0"})
    session = contract_cm.wait_session()
    for kind, payload in examples.items():
        session.send(kind, payload)
    received = [sm.next_command() for _ in examples]
    assert [kind_of(m) for m in received] == list(examples)
    assert received[3].update_instances.start_instances[0].instance.item_id == "service1"
    assert received[5].instance_log_request.filter.instance == -1
    assert received[8].connection_status.cloud_status == 1  # CONNECTED


def test_every_sm_kind_is_decoded(contract: Contract, contract_cm: ContractCM, sm: BareSM) -> None:
    for kind in contract.outgoing_kinds:
        sm.send(kind, {})
    session = contract_cm.wait_session()
    session.wait_for(contract.outgoing_kinds[-1])
    assert session.kinds() == list(contract.outgoing_kinds)


def test_wait_for_hands_out_each_reply_once(contract_cm: ContractCM, sm: BareSM) -> None:
    sm.send("node_config_status", {"state": "installed", "version": "1.0.0"})
    sm.send("node_config_status", {"state": "failed", "version": "2.0.0"})
    session = contract_cm.wait_session()
    assert (
        session.wait_for("node_config_status", predicate=lambda s: s.state == "failed").version
        == "2.0.0"
    )
    assert session.wait_for("node_config_status").version == "1.0.0"
    with pytest.raises(CMWaitTimeout, match="node_config_status"):
        session.wait_for("node_config_status", timeout=0.2)
    with pytest.raises(ValueError, match="not an SM->CM kind"):
        session.wait_for("sminfo")


def test_unknown_fields_pass_through_as_raw_frames(
    contract: Contract, contract_cm: ContractCM, sm: BareSM
) -> None:
    sm.send("sm_info", {"nodeId": "node0"})
    session = contract_cm.wait_session()
    session.send_raw(
        length_delimited_field(42, b"from a newer CM") + contract.encode("get_average_monitoring")
    )
    assert kind_of(sm.next_command()) == "get_average_monitoring"


def test_garbage_frame_fails_to_decode_on_the_sm(
    contract: Contract, contract_cm: ContractCM
) -> None:
    channel = grpc.insecure_channel(contract_cm.address)
    sm = BareSM(contract, channel)
    sm.send("sm_info", {"nodeId": "node0"})
    session = contract_cm.wait_session()
    session.send_raw(b"\xff\xff\xff\xff")  # field 31 with wire type 7: not protobuf
    with pytest.raises(grpc.RpcError) as failure:
        sm.next_command()
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    # grpcio fails the call locally without telling the server; the CM learns of it when the SM
    # drops the channel, which is what an SM that reconnects with a fresh channel does.
    channel.close()
    assert session.wait_closed()
    with pytest.raises(SessionClosed):
        session.send("get_node_config_status")


def test_cm_can_end_a_stream_with_a_status(contract_cm: ContractCM, sm: BareSM) -> None:
    sm.send("sm_info", {"nodeId": "node0"})
    session = contract_cm.wait_session()
    session.close(grpc.StatusCode.UNAVAILABLE, "CM going down")
    with pytest.raises(grpc.RpcError) as failure:
        sm.next_command()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "CM going down"
    assert session.wait_closed()


def test_session_ends_when_the_sm_stops_writing(contract_cm: ContractCM, sm: BareSM) -> None:
    sm.send("sm_info", {"nodeId": "node0"})
    sm.finish()
    session = contract_cm.wait_session()
    assert list(sm.responses) == []  # the CM ends its side with OK, like the reference
    assert session.wait_closed()
    with pytest.raises(SessionClosed, match="alert"):
        session.wait_for("alert")


def test_each_stream_is_a_new_session(
    contract: Contract, contract_cm: ContractCM, channel: grpc.Channel
) -> None:
    first, second = BareSM(contract, channel), BareSM(contract, channel)
    first.send("sm_info", {"nodeId": "a"})
    second.send("sm_info", {"nodeId": "b"})
    sessions = [contract_cm.wait_session(0), contract_cm.wait_session(1)]
    assert sorted(s.wait_for("sm_info").node_id for s in sessions) == ["a", "b"]
    first.responses.cancel()
    second.responses.cancel()
    assert all(s.wait_closed() for s in sessions)


def test_restart_on_the_same_port(contract: Contract, contract_cm_factory: CMFactory) -> None:
    old = contract_cm_factory()
    port = old.port
    old.stop()
    new = contract_cm_factory(port=port)
    assert new.port == port
    with grpc.insecure_channel(new.address) as channel:
        sm = BareSM(contract, channel)
        sm.send("sm_info", {"nodeId": "node0"})
        assert new.wait_session().wait_for("sm_info").node_id == "node0"
        sm.responses.cancel()


# --- GetBlobsInfos ------------------------------------------------------------------------------


def _blobs(contract: Contract, channel: grpc.Channel, digests: list[str]) -> Any:
    call = channel.unary_unary(
        GET_BLOBS_INFOS,
        request_serializer=contract.blobs_request.SerializeToString,
        response_deserializer=contract.blobs_infos.FromString,
    )
    return call(contract.blobs_request(digests=digests), timeout=RPC_TIMEOUT)


def test_blobs_infos_in_request_order(
    contract: Contract, contract_cm: ContractCM, channel: grpc.Channel
) -> None:
    contract_cm.blob_urls.update({"sha256:a": "https://x/a", "sha256:b": "https://x/b"})
    reply = _blobs(contract, channel, ["sha256:b", "sha256:a"])
    assert list(reply.urls) == ["https://x/b", "https://x/a"]
    assert contract_cm.blob_requests == [["sha256:b", "sha256:a"]]


def test_blobs_infos_unknown_digest_is_not_found(
    contract: Contract, contract_cm: ContractCM, channel: grpc.Channel
) -> None:
    contract_cm.blob_urls["sha256:a"] = "https://x/a"
    with pytest.raises(grpc.RpcError) as failure:
        _blobs(contract, channel, ["sha256:a", "sha256:zzz"])
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert "sha256:zzz" in failure.value.details()


# --- TLS ----------------------------------------------------------------------------------------


def _secure_sm(
    contract: Contract, cm: ContractCM, credentials: grpc.ChannelCredentials
) -> tuple[grpc.Channel, BareSM]:
    channel = grpc.secure_channel(cm.address, credentials)
    return channel, BareSM(contract, channel)


def test_mtls_session_sees_the_client_certificate(
    contract: Contract, contract_cm_factory: CMFactory, tls_material: TLSMaterial
) -> None:
    cm = contract_cm_factory(credentials=tls_material.server_credentials(require_client_auth=True))
    channel, sm = _secure_sm(contract, cm, tls_material.channel_credentials())
    with channel:
        sm.send("sm_info", {"nodeId": "node0"})
        session = cm.wait_session()
        assert session.wait_for("sm_info").node_id == "node0"
        assert session.peer_cert is not None
        assert der_from_pem(session.peer_cert) == der_from_pem(tls_material.client.cert_pem())
        sm.responses.cancel()


def test_mtls_refuses_a_client_without_a_certificate(
    contract: Contract, contract_cm_factory: CMFactory, tls_material: TLSMaterial
) -> None:
    cm = contract_cm_factory(credentials=tls_material.server_credentials(require_client_auth=True))
    channel, sm = _secure_sm(contract, cm, tls_material.channel_credentials(with_client_cert=False))
    with channel:
        sm.send("sm_info", {"nodeId": "node0"})
        with pytest.raises(grpc.RpcError) as failure:
            sm.next_command()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cm.sessions == []


def test_server_only_tls_accepts_a_client_without_a_certificate(
    contract: Contract, contract_cm_factory: CMFactory, tls_material: TLSMaterial
) -> None:
    cm = contract_cm_factory(credentials=tls_material.server_credentials(require_client_auth=False))
    channel, sm = _secure_sm(contract, cm, tls_material.channel_credentials(with_client_cert=False))
    with channel:
        sm.send("sm_info", {"nodeId": "node0"})
        session = cm.wait_session()
        assert session.wait_for("sm_info").node_id == "node0"
        assert session.peer_cert is None
        sm.responses.cancel()


def test_an_untrusted_cm_is_refused_by_the_client(
    contract: Contract, contract_cm_factory: CMFactory, tls_material: TLSMaterial
) -> None:
    cm = contract_cm_factory(
        credentials=tls_material.server_credentials(require_client_auth=False, untrusted=True)
    )
    channel, sm = _secure_sm(contract, cm, tls_material.channel_credentials())
    with channel:
        sm.send("sm_info", {"nodeId": "node0"})
        with pytest.raises(grpc.RpcError) as failure:
            sm.next_command()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cm.sessions == []


def test_reissued_client_certificate_replaces_the_files(tls_material: TLSMaterial) -> None:
    before = tls_material.client.cert_pem()
    key_before = tls_material.client.key_pem()
    after = tls_material.reissue_client_cert()
    assert after == tls_material.client.cert_pem()
    assert der_from_pem(after) != der_from_pem(before)
    assert tls_material.client.key_pem() != key_before
    assert sorted(p.name for p in Path(tls_material.directory).iterdir() if "next" in p.name) == []


def test_stopping_the_cm_ends_open_sessions(contract_cm: ContractCM, sm: BareSM) -> None:
    sm.send("sm_info", {"nodeId": "node0"})
    session = contract_cm.wait_session()
    session.wait_for("sm_info")
    contract_cm.stop()
    with pytest.raises(grpc.RpcError) as failure:
        sm.next_command()
    assert failure.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert session.wait_closed()
    with pytest.raises(SessionClosed):
        session.wait_for("alert")
