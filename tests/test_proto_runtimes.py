"""The generated code loads and round-trips on every protobuf runtime from 3.20 to today's.

Each runtime gets its own throwaway venv with only protobuf in it, and imports proto/gen through
an ``aos_sm`` folder that links to it. 3.20.3 is the oldest we promise, 4.21.12 is what Debian
bookworm ships (as python3-protobuf 3.21.12), the others are the last of each major line; the
newest is the test environment's own, which every other test uses.
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.host_only(
    reason="it builds one venv per protobuf runtime from PyPI; the emulated run checks Debian's own protobuf"
)

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "protobuf-venvs"
RUNTIMES = ["3.20.3", "4.21.12", "5.29.6", "6.33.6"]

PROGRAM = """
import google.protobuf
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as pb
from aos_sm.proto.common.v2 import common_pb2
out = pb.SMOutgoingMessages(sm_info=pb.SMInfo(node_id="n", runtimes=[pb.RuntimeInfo(max_dmips=7)]))
back = pb.SMOutgoingMessages.FromString(out.SerializeToString())
assert back.WhichOneof("SMOutgoingMessage") == "sm_info" and back.sm_info.runtimes[0].max_dmips == 7
alert = pb.Alert(core_alert=pb.CoreAlert(core_component="SM", message="m"))
assert alert.WhichOneof("AlertItem") == "core_alert"
assert common_pb2.InstanceIdent(type=common_pb2.COMPONENT).type == 1
from aos_sm.proto.iamanager.v6 import iamanager_pb2 as iam
node = iam.NodeInfo(node_id="n", max_dmips=9, cpus=[iam.CPUInfo(arch_info=common_pb2.ArchInfo(architecture="arm64"))])
assert iam.NodeInfo.FromString(node.SerializeToString()).cpus[0].arch_info.architecture == "arm64"
request = iam.RegisterInstanceRequest(permissions={"vis": iam.Permissions(permissions={"*": "rw"})})
assert iam.RegisterInstanceRequest.FromString(request.SerializeToString()).permissions["vis"].permissions["*"] == "rw"
assert [m.name for m in iam.DESCRIPTOR.services_by_name["IAMPublicCertService"].methods] == ["GetCert", "SubscribeCertChanged"]
print(google.protobuf.__version__)
"""


def _python_with_protobuf(version: str) -> Path:
    env_dir = CACHE / version
    python = env_dir / "bin" / "python"
    marker = env_dir / "installed"
    if not marker.exists():
        venv.create(env_dir, with_pip=True, clear=True)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"protobuf=={version}"],
            capture_output=True, text=True, timeout=300,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot install protobuf {version} from the package index: {result.stderr[-300:]}")
        marker.write_text(version)
    return python


def _namespace(tmp_path: Path) -> Path:
    package = tmp_path / "aos_sm"
    package.mkdir()
    (package / "proto").symlink_to(ROOT / "proto" / "gen")
    return tmp_path


@pytest.mark.parametrize("version", RUNTIMES)
def test_generated_code_loads_on_protobuf(version: str, tmp_path: Path) -> None:
    python = _python_with_protobuf(version)
    env = {**os.environ, "PYTHONPATH": str(_namespace(tmp_path))}
    result = subprocess.run([str(python), "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == version
