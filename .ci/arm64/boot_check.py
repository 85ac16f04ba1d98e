"""The boot test's host side: a CM on 127.0.0.1, qemu-system-aarch64 booting the arm64 image whose
init starts the agent, and the checks on what the agent registered.

The guest reaches CM at 10.0.2.100:8093 through qemu's user networking with restrict=on and a
guestfwd to this CM's loopback port: no other traffic leaves the guest, none leaves the host.

Passes when SMInfo arrives with ArchInfo aarch64/v8 and a DMIPS figure equal to what the probe in
the guest computed from its Cortex-A53 cores (CPU part 0xd03, no cpufreq under QEMU: the clock is
the documented guess), and the probe's JSON on the console names those cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "tests"))

from contract_cm import ContractCM, ContractCMError  # noqa: E402

from aos_sm.hw.cpu import GUESSED_MHZ  # noqa: E402
from aos_sm.hw.dmips_table import dmips_per_mhz_for_arm  # noqa: E402

GUEST_CM = "10.0.2.100:8093"
CPUS = 2


class BootCheckFailed(Exception):
    """The guest did not register as expected; the message says what was seen."""


def qemu_command(args: argparse.Namespace, cm_port: int) -> list[str]:
    guest_host, guest_port = GUEST_CM.split(":")
    return [
        "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-smp", str(CPUS), "-m", "1024",
        "-accel", "tcg", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{args.console}",
        "-kernel", str(args.kernel), "-initrd", str(args.initrd),
        "-append", "console=ttyAMA0 panic=-1 loglevel=4",
        "-drive", f"file={args.disk},format=raw,if=none,id=root",
        "-device", "virtio-blk-device,drive=root",
        "-netdev", f"user,id=net,restrict=on,"
                   f"guestfwd=tcp:{guest_host}:{guest_port}-tcp:127.0.0.1:{cm_port}",
        "-device", "virtio-net-device,netdev=net",
    ]


def console_probe(console: Path) -> dict[str, Any] | None:
    text = console.read_text(errors="replace") if console.exists() else ""
    begin, end = text.find("@@probe-begin@@"), text.find("@@probe-end@@")
    if begin < 0 or end < begin:
        return None
    body = text[begin + len("@@probe-begin@@"):end].replace("\r", "")
    return json.loads(body)  # type: ignore[no-any-return]


def console_vlan(console: Path) -> str | None:
    """The guest's report of the VLAN link (S99probe-console), if it came."""
    text = console.read_text(errors="replace") if console.exists() else ""
    for line in text.replace("\r", "").splitlines():
        if line.startswith("@@vlan@@ "):
            return line[len("@@vlan@@ "):]
    return None


def check(args: argparse.Namespace) -> str:
    deadline = time.monotonic() + args.timeout
    with ContractCM() as cm:
        command = qemu_command(args, cm.port)
        print("[boot-check] " + " ".join(command), flush=True)
        qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        try:
            session = None
            while session is None:
                if qemu.poll() is not None:
                    raise BootCheckFailed(f"qemu exited with {qemu.returncode} before the agent registered")
                if time.monotonic() > deadline:
                    raise BootCheckFailed(f"no RegisterSM stream within {args.timeout:.0f} s")
                try:
                    session = cm.wait_session(timeout=5)
                except ContractCMError:
                    continue
            sm_info = session.wait_for("sm_info", timeout=max(1.0, deadline - time.monotonic()))
            print(f"[boot-check] SMInfo after {args.timeout - (deadline - time.monotonic()):.0f} s", flush=True)
            probe = None
            while probe is None and time.monotonic() < deadline and qemu.poll() is None:
                probe = console_probe(args.console)
                if probe is None:
                    time.sleep(2)
            if probe is None:
                raise BootCheckFailed("the probe's JSON never reached the console")
            summary = verify(sm_info, probe)
            # A provider network with a VLAN: the agent puts a vlan-<8 hex> link on its uplink.
            session.send("update_networks", {"networks": [
                {"networkId": "net-vlan", "subnet": "172.30.0.0/16", "ip": "172.30.0.1", "vlanId": 42}]})
            vlan = None
            while vlan is None and time.monotonic() < deadline and qemu.poll() is None:
                vlan = console_vlan(args.console)
                if vlan is None:
                    time.sleep(2)
            if vlan is None or "@eth0" not in vlan:
                raise BootCheckFailed(f"no VLAN link on the uplink after UpdateNetworks (console: {vlan!r})")
            return f"{summary}; VLAN link {vlan.split(':')[1].strip()} on eth0"
        finally:
            qemu.terminate()
            try:
                qemu.wait(timeout=30)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait()


def verify(sm_info: Any, probe: dict[str, Any]) -> str:
    if not sm_info.runtimes:
        raise BootCheckFailed(f"SMInfo has no runtime: {sm_info}")
    runtime = sm_info.runtimes[0]
    arch = (runtime.arch_info.architecture, runtime.arch_info.variant)
    if arch != ("arm64", "v8"):  # GOARCH, as CM compares it with image configs
        raise BootCheckFailed(f"SMInfo ArchInfo is {arch}, expected ('arm64', 'v8')")
    cores = [(cpu.get("part"), cpu.get("core")) for cpu in probe["cpus"]]
    if cores != [("0xd03", "Cortex-A53")] * CPUS:
        raise BootCheckFailed(f"the guest's probe saw cores {cores}, expected {CPUS} x Cortex-A53 (0xd03)")
    # No cpufreq and no device-tree clock under QEMU: the documented guess, DMIPS/MHz from the table.
    expected = round(CPUS * dmips_per_mhz_for_arm("Cortex-A53").dmips_per_mhz * GUESSED_MHZ)
    sources = {cpu["maxMHzSource"] for cpu in probe["cpus"]}
    probed = int(probe["smInfo"]["runtimes"][0]["maxDmips"])
    if runtime.max_dmips != expected or runtime.max_dmips != probed:
        raise BootCheckFailed(
            f"SMInfo max_dmips {runtime.max_dmips}, the probe says {probed}, "
            f"{CPUS} x Cortex-A53 at {GUESSED_MHZ} MHz make {expected} (clock sources {sources})"
        )
    return (f"SMInfo from node {sm_info.node_id!r}: arch {arch[0]}/{arch[1]}, "
            f"max_dmips {runtime.max_dmips} = {CPUS} x Cortex-A53 (0xd03) at {GUESSED_MHZ:.0f} MHz "
            f"({'/'.join(sorted(sources))}), total_ram {runtime.total_ram}, runtime {runtime.type}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kernel", type=Path, required=True)
    parser.add_argument("--initrd", type=Path, required=True)
    parser.add_argument("--disk", type=Path, required=True)
    parser.add_argument("--console", type=Path, required=True, help="the guest's serial console goes here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds from qemu start to the checks")
    args = parser.parse_args()
    try:
        print("[boot-check] PASSED: " + check(args), flush=True)
        return 0
    except (BootCheckFailed, ContractCMError, ValueError) as error:
        print(f"[boot-check] FAILED: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
