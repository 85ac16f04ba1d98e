"""The gRPC adapter of the IAM port against the fake IAM over TLS: each call, each stream, and
IAM going away and coming back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, List

import grpc
import pytest

from aos_sm.agent.errors import Failed, InvalidArgument
from aos_sm.agent.iam.client import GrpcIamClient
from aos_sm.agent.iam.instance_secrets import IamInstanceSecrets, permissions_for_iam
from aos_sm.agent.iam.port import IamCertInfo, IamNodeInfo, IamUnavailable
from aos_sm.agent.iam.sim import SimulatedIAM
from aos_sm.proto.common.v2 import common_pb2

INSTANCE = common_pb2.InstanceIdent(item_id="item1", subject_id="subject1", instance=2)


def client_of(iam: SimulatedIAM, **extra: object) -> GrpcIamClient:
    return GrpcIamClient(iam.public_address, ca_cert=iam.ca.cert_path, cert_type="sm",
                         protected_url=iam.protected_address, reconnect_first_wait=0.05, reconnect_cap=0.2,
                         **extra)  # type: ignore[arg-type]


def test_node_info_and_certificate(iam: SimulatedIAM) -> None:
    client = client_of(iam)
    info = client.get_node_info(5)
    assert (info.node_id, info.max_dmips, info.architecture, info.architecture_variant) == \
        ("iam-node-7", iam.node_info.max_dmips, "arm64", "v8")
    cert = client.get_cert("sm", 5)
    assert cert.cert_url == iam.certs["sm"].cert.as_uri() and cert.key_url == iam.certs["sm"].key.as_uri()
    assert int.from_bytes(cert.serial, "big") == iam.certs["sm"].serial
    with pytest.raises(IamUnavailable) as caught:
        client.get_cert("unknown", 5)
    assert caught.value.code == "NOT_FOUND"
    client.close()


def test_an_iam_this_ca_did_not_sign_is_refused(tmp_path: Path, iam: SimulatedIAM) -> None:
    other = SimulatedIAM(tmp_path / "other").start()
    try:
        client = GrpcIamClient(other.public_address, ca_cert=iam.ca.cert_path, cert_type="sm")
        with pytest.raises(IamUnavailable) as caught:
            client.get_node_info(2)
        assert caught.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        other.stop()


def test_register_and_unregister_over_mtls_with_our_certificate(iam: SimulatedIAM) -> None:
    secrets = IamInstanceSecrets(client_of(iam))
    secret = secrets.register(INSTANCE, {"vis": {"*": "rw"}, "dbus": {"get": "r"}})
    assert iam.registered[("item1", "subject1", 2)] == (secret, {"vis": {"*": "rw"}, "dbus": {"get": "r"}})
    secrets.unregister(INSTANCE)
    assert iam.unregistered == [("item1", "subject1", 2)] and not iam.registered


def test_iam_refusing_fails_the_registration_with_the_reason_first(iam: SimulatedIAM) -> None:
    iam.register_error = (grpc.StatusCode.PERMISSION_DENIED, "unknown functional server vis")
    with pytest.raises(Failed) as caught:
        IamInstanceSecrets(client_of(iam)).register(INSTANCE, {"vis": {"*": "rw"}})
    message = str(caught.value)
    assert message == ("IAM refused permissions: PERMISSION_DENIED: unknown functional server vis "
                       "(IAM RegisterInstance)")


def test_permissions_must_be_function_access_strings() -> None:
    assert permissions_for_iam({"vis": {"*": "rw"}}) == {"vis": {"*": "rw"}}
    with pytest.raises(InvalidArgument, match="permissions.vis: expected"):
        permissions_for_iam({"vis": ["rw"]})


def renew_until_heard(iam: SimulatedIAM, arrived: threading.Event) -> Any:
    for _ in range(50):
        renewed = iam.renew("sm")
        if arrived.wait(0.2):
            return renewed
    raise AssertionError("the subscription never heard a renewal")


def test_cert_stream_survives_iam_restarting(iam: SimulatedIAM) -> None:
    client = client_of(iam)
    heard: List[IamCertInfo] = []
    nodes: List[IamNodeInfo] = []
    arrived = threading.Event()

    def on_cert(info: IamCertInfo) -> None:
        heard.append(info)
        arrived.set()

    subscription = client.subscribe_cert_changed("sm", on_cert)
    node_subscription = client.subscribe_node_changed(nodes.append)
    try:
        # Renew until the subscription is (again) attached: it opens on its own thread.
        renew_until_heard(iam, arrived)
        iam.stop()
        iam.start()
        arrived.clear()
        renewed = renew_until_heard(iam, arrived)
        assert int.from_bytes(heard[-1].serial, "big") == renewed.serial
    finally:
        subscription.cancel()
        node_subscription.cancel()
        client.close()
