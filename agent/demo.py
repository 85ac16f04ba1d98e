"""``aos-sm demo``: the agent and the CM simulator on loopback, a registration and a few commands.

Everything is real: a gRPC server on 127.0.0.1, the agent connecting to it, the node's real
hardware probe, a node config stored in a temporary working directory.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Tuple

from google.protobuf import json_format

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .app import build_agent, describe
from .cmsim import SimSession, SimulatedCM, command_message
from .config import parse_config

In = sm_pb2.SMIncomingMessages


def _show(title: str, message: object) -> None:
    text = json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2)  # type: ignore[arg-type]
    print(f"\n== {title}\n{text}", flush=True)


def _steps() -> List[Tuple[str, Callable[[], In], str]]:
    good = json.dumps({"version": "1.0.0", "nodeGroupSubject": {"codename": "demo-group"},
                       "alertRules": {"ram": {"minTimeout": "PT5S", "minThreshold": 80, "maxThreshold": 95}}})
    return [
        ("CM asks for the node config status", lambda: command_message("get-config"), "node_config_status"),
        ("CM checks a malformed node config: the SM answers with an error, stream stays up",
         lambda: In(check_node_config=sm_pb2.CheckNodeConfig(node_config="{not json", version="1.0.0")),
         "node_config_status"),
        ("CM sets a valid node config 1.0.0",
         lambda: In(set_node_config=sm_pb2.SetNodeConfig(node_config=good, version="1.0.0")), "node_config_status"),
        ("CM sets the same version again: alreadyExist",
         lambda: In(set_node_config=sm_pb2.SetNodeConfig(node_config=good, version="1.0.0")), "node_config_status"),
        ("CM asks to start an instance on a runtime this node does not have (shown: activating; failed follows)",
         lambda: command_message("start demo-service"), "update_instances_status"),
        ("CM asks for the system log", lambda: command_message("system-log demo-log"), "log"),
    ]


def run_demo(timeout: float = 15.0) -> int:
    with tempfile.TemporaryDirectory(prefix="aos-sm-demo-") as workdir:
        simulator = SimulatedCM().start()
        config = parse_config(json.dumps({
            "cmServerURL": simulator.address,
            "tlsMode": "plaintext",
            "workingDir": workdir,
            "resourcesConfigFile": str(Path(workdir) / "resources.cfg"),
            "cmReconnectTimeout": "1s",
            # A try-out on any machine: no namespaces, no firewall table of ours on its network.
            "network": {"enabled": False},
        }))
        agent = build_agent(config)
        print("\n".join(describe(agent)), flush=True)
        agent.start()
        try:
            session = simulator.wait_session(1, timeout)
            if session is None:
                print("demo: the agent did not connect to the simulator", file=sys.stderr)
                return 1
            sm_info = session.wait_for("sm_info", timeout)
            _show("SM registered: SMInfo (first message)", sm_info)
            _show("then NodeInstancesStatus", session.wait_for("node_instances_status", timeout))
            session.send(command_message("cloud on"))
            return _run_steps(session, timeout)
        finally:
            agent.stop()
            simulator.stop(0)


def _run_steps(session: SimSession, timeout: float) -> int:
    for title, make, reply_kind in _steps():
        seen = len(session.received)
        session.send(make())
        reply = session.wait_for(reply_kind, timeout, after=seen)
        if reply is None:
            print(f"demo: no {reply_kind} after: {title}", file=sys.stderr)
            return 1
        _show(f"{title} -> {reply_kind}", reply)
    print("\ndemo: done; every command got its reply", flush=True)
    return 0
