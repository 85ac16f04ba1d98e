"""Command round-trip rate through the agent, as a ratio against a bare grpcio echo.

CM sends GetNodeConfigStatus and waits for NodeConfigStatus, one at a time, N times. The same CM
(agent/cmsim.py) talks first to bench/bare_client.py and then to the real agent, in this process,
alternating rounds so that machine noise hits both sides alike.

    python bench/roundtrip.py [--count 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_client import BareClient  # noqa: E402

from aos_sm.agent.app import build_agent  # noqa: E402
from aos_sm.agent.cmsim import SimSession, SimulatedCM  # noqa: E402
from aos_sm.agent.config import parse_config  # noqa: E402
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2  # noqa: E402

REQUEST = sm_pb2.SMIncomingMessages(get_node_config_status=sm_pb2.GetNodeConfigStatus())


def ping_pong(session: SimSession, count: int) -> float:
    """Round trips per second over ``count`` sequential requests."""
    seen = len(session.received)
    started = time.perf_counter()
    for _ in range(count):
        session.send(REQUEST)
        if session.wait_for("node_config_status", 10.0, after=seen) is None:
            raise RuntimeError("no reply within 10 s")
        seen = len(session.received)
    return count / (time.perf_counter() - started)


def bare_round(count: int) -> float:
    cm = SimulatedCM().start()
    client = BareClient(cm.address)
    try:
        client.start()
        session = cm.wait_session(1)
        assert session is not None and session.wait_for("node_instances_status") is not None
        return ping_pong(session, count)
    finally:
        client.stop()
        cm.stop(0)


def agent_round(count: int) -> float:
    cm = SimulatedCM().start()
    with tempfile.TemporaryDirectory() as workdir:
        config = parse_config(json.dumps({
            "nodeId": "bench", "cmServerURL": cm.address, "tlsMode": "plaintext", "workingDir": workdir,
            "resourcesConfigFile": str(Path(workdir) / "none.cfg"), "runtimes": [{"type": "runc"}],
            # The round trip runs on this machine's loopback: no network manager (it would add its
            # firewall table and counters to the machine's network); bench/startup.py measures it.
            "network": {"enabled": False},
        }))
        agent = build_agent(config)
        agent.start()
        try:
            session = cm.wait_session(1)
            assert session is not None and session.wait_for("node_instances_status") is not None
            return ping_pong(session, count)
        finally:
            agent.stop()
            cm.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    bare: List[float] = []
    agent: List[float] = []
    sides: Tuple[Tuple[List[float], Callable[[int], float]], ...] = ((bare, bare_round), (agent, agent_round))
    for _ in range(args.rounds):
        for results, run in sides:
            results.append(run(args.count))
    bare_rate, agent_rate = statistics.median(bare), statistics.median(agent)
    print(f"round trips/s (median of {args.rounds} x {args.count}): "
          f"bare grpcio {bare_rate:.0f}, aos-sm agent {agent_rate:.0f}")
    print(f"ratio agent/bare: {agent_rate / bare_rate:.2f}  (target >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
