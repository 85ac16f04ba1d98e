"""An instance whose item config has ``permissions``, run with runc: IAM (the fake, over mTLS)
registers it on start, it sees ``AOS_SECRET`` equal to IAM's answer, and it is unregistered on
stop; an IAM refusal fails the start with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grpc
import pytest

from launcher_helpers import RecordingSender, wait_until
from oci_fixture import BlobServer, build_image
from test_itemconfig_runc import KEEP_RUNNING, info, output_lines, resolver_for, started

from aos_sm.agent.iam.client import GrpcIamClient
from aos_sm.agent.iam.instance_secrets import IamInstanceSecrets
from aos_sm.agent.iam.sim import SimulatedIAM
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("system")]

PERMISSIONS = {"vis": {"*": "rw"}}


@pytest.fixture
def iam(tmp_path: Path) -> Iterator[SimulatedIAM]:
    sim = SimulatedIAM(tmp_path / "iam").start()
    yield sim
    sim.stop()


def secrets_of(iam: SimulatedIAM) -> IamInstanceSecrets:
    return IamInstanceSecrets(GrpcIamClient(iam.public_address, ca_cert=iam.ca.cert_path, cert_type="sm",
                                            protected_url=iam.protected_address))


def test_an_instance_with_permissions_sees_iams_secret_and_is_unregistered_on_stop(
        make_launcher, blob_server: BlobServer, layer: bytes, iam: SimulatedIAM) -> None:
    image = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["echo SECRET=$AOS_SECRET; " + KEEP_RUNNING],
                        item_config={"permissions": PERMISSIONS})
    plain = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["echo SECRET=${AOS_SECRET-none}; " + KEEP_RUNNING])
    sender = RecordingSender()
    urls = {**blob_server.publish(image), **blob_server.publish(plain)}
    launcher = make_launcher(sender, resolver_for(urls), secrets=secrets_of(iam))
    launcher.start()
    request = info(image.manifest_digest, "with-perms")
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[request, info(plain.manifest_digest, "plain")]))
    assert started(sender, "with-perms").state == "active"
    assert started(sender, "plain").state == "active"

    (secret, permissions) = iam.registered[("with-perms", "subj", 1)]
    assert permissions == PERMISSIONS and len(iam.registered) == 1  # "plain" has no permissions
    assert f"SECRET={secret}" in output_lines(launcher, "with-perms")
    assert "SECRET=none" in output_lines(launcher, "plain")

    launcher.update_instances(sm_pb2.UpdateInstances(stop_instances=[request.instance]))
    wait_until(lambda: ("with-perms", "subj", 1) in iam.unregistered, what="UnregisterInstance")
    assert not iam.registered


def test_iam_refusing_fails_that_instance_start_with_the_reason(
        make_launcher, blob_server: BlobServer, layer: bytes, iam: SimulatedIAM) -> None:
    iam.register_error = (grpc.StatusCode.PERMISSION_DENIED, "no such functional server")
    image = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=[KEEP_RUNNING],
                        item_config={"permissions": PERMISSIONS})
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)), secrets=secrets_of(iam))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "refused")]))
    status = started(sender, "refused")
    assert status.state == "failed"
    # Cause first: CM keeps 64 characters.
    assert status.error.message[:64] == "IAM refused permissions: PERMISSION_DENIED: no such functional s"
    assert iam.unregistered == []
