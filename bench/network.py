"""Attaching one instance to a network (namespace + veth + address + route + firewall chain): the
network manager against the same steps as `ip`/`nft` commands in a shell script, side by side in
one run, and the same for 20 instances.

    sudo python bench/network.py [--rounds 5] [--many 20]

Everything happens in a network namespace this bench makes (the process moves into it first), so
nothing of the machine's own network changes; needs root.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import List

from aos_sm.agent.network.build import adapter_factory
from aos_sm.agent.network.instance import AttachRequest, NetworkParameters
from aos_sm.agent.network.manager import NetworkManager
from aos_sm.agent.network.plan import bridge_name
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

CLONE_NEWNET = 0x40000000


class Quiet:
    def send(self, message: object) -> None:
        pass


def enter(namespace: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{namespace}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")


def address(index: int) -> str:
    return f"172.18.{1 + index // 200}.{2 + index % 200}"


def shell_attach(tag: str, index: int, bridge: str) -> str:
    """The same steps as the manager's attach, as an operator would type them."""
    ns, veth, ip, chain = f"{tag}-{index}", f"{tag}v{index}", address(index), f"sh-{tag}-{index}"
    rules = "\n".join([
        f"add chain inet aos-sm {chain}-out", f"add chain inet aos-sm {chain}-in",
        f"add rule inet aos-sm {chain}-out ct state established,related accept",
        f"add rule inet aos-sm {chain}-out ip daddr 172.18.0.0/16 accept",
        f"add rule inet aos-sm {chain}-out ip daddr {{ 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 }} drop",
        f"add rule inet aos-sm {chain}-out accept",
        f"add rule inet aos-sm {chain}-in ct state established,related accept",
        f"add rule inet aos-sm {chain}-in ip saddr 172.18.0.0/16 accept",
        f"add rule inet aos-sm {chain}-in drop",
        f"add element inet aos-sm from_instance {{ {ip} : jump {chain}-out }}",
        f"add element inet aos-sm to_instance {{ {ip} : jump {chain}-in }}",
    ])
    return (f"ip netns add {ns}\nip -n {ns} link set lo up\n"
            f"ip link add {veth} type veth peer name eth0 netns {ns}\n"
            f"ip link set {veth} master {bridge}\nip link set {veth} type bridge_slave hairpin on\n"
            f"ip link set {veth} up\nip -n {ns} addr add {ip}/16 dev eth0\nip -n {ns} link set eth0 up\n"
            f"ip -n {ns} route add default via 172.18.0.1\n"
            f"nft -f - <<'RULES'\n{rules}\nRULES\n")


def shell_detach(tag: str, index: int) -> str:
    ns, veth, ip, chain = f"{tag}-{index}", f"{tag}v{index}", address(index), f"sh-{tag}-{index}"
    return (f"nft 'delete element inet aos-sm from_instance {{ {ip} }}; "
            f"delete element inet aos-sm to_instance {{ {ip} }}; "
            f"delete chain inet aos-sm {chain}-out; delete chain inet aos-sm {chain}-in'\n"
            f"ip link del {veth}\nip netns del {ns}\n")


def timed_shell(script: str) -> float:
    started = time.perf_counter()
    subprocess.run(["sh", "-e", "-c", script], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--many", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py needs root (network namespaces): no ratio measured")
        return 0
    node = f"bnet{uuid.uuid4().hex[:6]}"
    tag = f"b{uuid.uuid4().hex[:4]}"
    subprocess.run(["ip", "netns", "add", node], check=True)
    one_agent: List[float] = []
    one_shell: List[float] = []
    many_agent: List[float] = []
    many_shell: List[float] = []
    try:
        enter(node)  # this process (and the shell scripts it runs) now live in the bench's namespace
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with tempfile.TemporaryDirectory() as workdir:
            prefix = f"aos-sm-{tag}-"
            manager = NetworkManager(working_dir=Path(workdir), sender=Quiet(), namespace_prefix=prefix,
                                     make_adapter=adapter_factory())
            manager.start()
            manager.update_networks(sm_pb2.UpdateNetworks(networks=[sm_pb2.UpdateNetworkParameters(
                network_id="bench", subnet="172.18.0.0/16", ip="172.18.0.1")]))
            bridge = bridge_name("bench")

            def request(index: int) -> AttachRequest:
                name = f"{prefix}{index}"
                return AttachRequest(name, name, NetworkParameters("bench", "172.18.0.0/16", address(index)))

            try:
                # A network's bridge exists only while an instance of it is attached: one instance
                # holds it for the whole bench, so both sides attach to an existing bridge (the
                # common case; the network's first attach also builds the bridge).
                holder = args.many + 1
                manager.attach(request(holder), 1)
                for run in range(1, args.rounds + 1):
                    started = time.perf_counter()
                    manager.attach(request(0), run)
                    one_agent.append(time.perf_counter() - started)
                    manager.detach(f"{prefix}0", run)
                    one_shell.append(timed_shell(shell_attach(tag, 0, bridge)))
                    timed_shell(shell_detach(tag, 0))

                    started = time.perf_counter()
                    for index in range(args.many):
                        manager.attach(request(index), run)
                    many_agent.append(time.perf_counter() - started)
                    for index in range(args.many):
                        manager.detach(f"{prefix}{index}", run)
                    many_shell.append(timed_shell("".join(shell_attach(tag, i, bridge) for i in range(args.many))))
                    timed_shell("".join(shell_detach(tag, i) for i in range(args.many)))
            finally:
                manager.detach(f"{prefix}{args.many + 1}", args.rounds + 1)
                manager.update_networks(sm_pb2.UpdateNetworks())
                manager.keep_only(set())
                manager.close()
    finally:
        for name in os.listdir("/run/netns"):
            if name.startswith(f"{tag}-"):
                subprocess.run(["ip", "netns", "delete", name], check=False)
        subprocess.run(["ip", "netns", "delete", node], check=False)
    a1, s1 = statistics.median(one_agent), statistics.median(one_shell)
    an, sn = statistics.median(many_agent), statistics.median(many_shell)
    print(f"attach 1 instance (median of {args.rounds}): ip/nft script {s1 * 1000:.1f} ms, "
          f"aos-sm {a1 * 1000:.1f} ms, ratio {a1 / s1:.2f}")
    print(f"attach {args.many} instances one after another: ip/nft script {sn * 1000:.1f} ms, "
          f"aos-sm {an * 1000:.1f} ms, ratio {an / sn:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
