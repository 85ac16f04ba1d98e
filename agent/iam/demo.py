"""``aos-sm demo --iam``: the agent in IAM mode against the fake IAM and the CM simulator over mTLS.

IAM's node info gives the node id and DMIPS before CM is contacted; the CM certificate comes
from IAM; IAM renews it and the agent registers again with the new one.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path

from google.protobuf import json_format

from ..app import build_agent, describe
from ..cmsim import SimulatedCM
from ..config import parse_config
from .sim import SimulatedIAM
from .startup import iam_client, wait_for_node_info


def run_iam_demo(timeout: float = 15.0) -> int:
    with tempfile.TemporaryDirectory(prefix="aos-sm-iam-demo-") as workdir:
        iam = SimulatedIAM(Path(workdir) / "iam").start()
        cm_cert = iam.issue_server_cert("cm")
        simulator = SimulatedCM(credentials=iam.ca.server_credentials(cm_cert, require_client_auth=True)).start()
        config = parse_config(json.dumps({
            "cmServerURL": simulator.address, "tlsMode": "mtls", "caCert": str(iam.ca.cert_path),
            "iamPublicServerURL": iam.public_address, "iamProtectedServerURL": iam.protected_address,
            "certStorage": "sm", "workingDir": str(Path(workdir) / "work"),
            "resourcesConfigFile": str(Path(workdir) / "resources.cfg"), "cmReconnectTimeout": "1s",
            # A try-out on any machine, as `aos-sm demo`: no namespaces, no firewall table of ours.
            "network": {"enabled": False},
        }))
        print(f"fake IAM at {iam.public_address} (CA {iam.ca.cert_path}); CM simulator at {simulator.address} (mTLS)",
              flush=True)
        client = iam_client(config)
        info = wait_for_node_info(client, config, threading.Event())
        assert info is not None  # only a set stop event returns None
        agent = build_agent(config, iam=(client, info))
        print("\n".join(describe(agent)), flush=True)
        agent.start()
        try:
            first = simulator.wait_session(1, timeout)
            sm_info = first.wait_for("sm_info", timeout) if first is not None else None
            if sm_info is None:
                print("demo: the agent did not register with the simulator", file=sys.stderr)
                return 1
            text = json.dumps(json_format.MessageToDict(sm_info, preserving_proto_field_name=True), indent=2)
            print(f"\n== SMInfo: node id and DMIPS from IAM's node info\n{text}", flush=True)
            renewed = iam.renew("sm")
            print(f"\n== IAM renews the sm certificate (serial {renewed.serial:x}): the agent reconnects", flush=True)
            second = simulator.wait_session(2, timeout)
            if second is None or second.wait_for("sm_info", timeout) is None:
                print("demo: no new session after the renewal", file=sys.stderr)
                return 1
            print("== registered again with the renewed certificate\n\ndemo: done", flush=True)
            return 0
        finally:
            agent.stop()
            simulator.stop(0)
            iam.stop()
