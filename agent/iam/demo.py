"""``aos-sm demo --iam``: the agent in IAM mode against the fake IAM and the CM simulator over mTLS.

IAM's node info gives the node id and DMIPS before CM is contacted; the CM certificate comes
from IAM; IAM renews it and the agent registers again with the new one. Told as steps, like
``aos-sm demo`` (agent/story.py); the agent's log goes to a file, or to stderr with ``--verbose``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional, TextIO

from google.protobuf import json_format

from ..app import Agent, build_agent, describe
from ..cmsim import SimulatedCM
from ..config import parse_config
from ..story import Story, logs_to_file
from .sim import SimulatedIAM
from .startup import iam_client, wait_for_node_info


def run_iam_demo(timeout: float = 15.0, *, verbose: bool = False, log_file: Optional[Path] = None,
                 out: Optional[TextIO] = None) -> int:
    story = Story(out or sys.stdout)
    with logs_to_file(log_file, verbose, prefix="aos-sm-iam-demo-") as log_path:
        try:
            _run(story, timeout)
        except Exception as err:  # the summary must still come, naming what broke
            if not story.is_open:
                story.step("The demo itself", "Something outside the steps went wrong.")
            story.fail(f"{type(err).__name__}: {err}")
    return story.summary(log_path)


def _run(story: Story, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="aos-sm-iam-demo-") as workdir:
        story.step("Start a fake IAM and a CM simulator that demands mTLS",
                   "On a unit, IAM owns the node's identity and certificates; CM accepts only a node that presents "
                   "a certificate from the unit's CA.")
        iam = SimulatedIAM(Path(workdir) / "iam").start()
        cm_cert = iam.issue_server_cert("cm")
        simulator = SimulatedCM(credentials=iam.ca.server_credentials(cm_cert, require_client_auth=True)).start()
        agent: Optional[Agent] = None
        try:
            story.say(f"fake IAM at {iam.public_address} (CA {iam.ca.cert_path})", "IAM")
            story.say(f"CM simulator at {simulator.address} (mTLS)", "CM")
            story.ok()
            config = parse_config(json.dumps({
                "cmServerURL": simulator.address, "tlsMode": "mtls", "caCert": str(iam.ca.cert_path),
                "iamPublicServerURL": iam.public_address, "iamProtectedServerURL": iam.protected_address,
                "certStorage": "sm", "workingDir": str(Path(workdir) / "work"),
                "resourcesConfigFile": str(Path(workdir) / "resources.cfg"), "cmReconnectTimeout": "1s",
                # A try-out on any machine, as `aos-sm demo`: no namespaces, no firewall table of ours.
                "network": {"enabled": False},
            }))
            story.step("The agent asks IAM who this node is, then registers with CM over mTLS",
                       "With iamPublicServerURL the node id, DMIPS and RAM come from IAM's node info before CM is "
                       "contacted, and the client certificate comes from IAM on every connect.")
            client = iam_client(config)
            info = wait_for_node_info(client, config, threading.Event())
            assert info is not None  # only a set stop event returns None
            agent = build_agent(config, iam=(client, info))
            for line in describe(agent):
                story.say(line, "SM")
            agent.start()
            first = simulator.wait_session(1, timeout)
            sm_info = first.wait_for("sm_info", timeout) if first is not None else None
            if sm_info is None:
                story.fail("the agent did not register with the simulator")
                return
            text = json.dumps(json_format.MessageToDict(sm_info, preserving_proto_field_name=True), indent=2)
            story.say(f"SMInfo: node id and DMIPS from IAM's node info\n{text}", "SM")
            story.ok()

            story.step("IAM renews the node's certificate",
                       "Certificates expire; IAM renews them and tells the agent, which closes its session and "
                       "connects again presenting the new one.")
            renewed = iam.renew("sm")
            story.say(f"renewed the sm certificate: serial {renewed.serial:x}", "IAM")
            second = simulator.wait_session(2, timeout)
            if second is None or second.wait_for("sm_info", timeout) is None:
                story.fail("no new session after the renewal")
                return
            story.say("registered again with the renewed certificate", "SM")
            story.ok()
        finally:
            if agent is not None:
                agent.stop()
            simulator.stop(0)
            iam.stop()
