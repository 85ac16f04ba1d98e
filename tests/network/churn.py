"""Run inside the node namespace by test_restart.py: a manager (as the agent builds it) that
creates a network, then attaches and detaches instances forever, until it is killed."""

from __future__ import annotations

import sys
from pathlib import Path

from aos_sm.agent.network.build import real_parts
from aos_sm.agent.network.instance import AttachRequest, NetworkParameters
from aos_sm.agent.network.manager import NetworkManager
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


class Quiet:
    def send(self, message: object) -> None:
        pass


def main() -> None:
    working_dir, prefix = Path(sys.argv[1]), sys.argv[2]
    manager = NetworkManager(working_dir=working_dir, sender=Quiet(), namespace_prefix=prefix,
                             make_adapter=real_parts(working_dir / "network"))
    manager.start()
    manager.update_networks(sm_pb2.UpdateNetworks(networks=[sm_pb2.UpdateNetworkParameters(
        network_id="net-a", subnet="172.18.0.0/16", ip="172.18.0.1")]))
    run = 0
    while True:
        run += 1
        for index in range(3):
            name = f"{prefix}{index:016x}"  # shaped like a container id: strays are found by it
            params = NetworkParameters("net-a", "172.18.0.0/16", f"172.18.0.{index + 2}")
            manager.attach(AttachRequest(name, name, params, (f"{index}.subj.item",)), run)
            print(f"attached {run} {index}", flush=True)
        for index in range(2):
            manager.detach(f"{prefix}{index:016x}", run)


if __name__ == "__main__":
    main()
