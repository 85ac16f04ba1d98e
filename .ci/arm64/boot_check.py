"""The boot test's host side: a CM on 127.0.0.1, qemu-system-aarch64 booting the arm64 image whose
init starts the agent, and the checks on what the agent registered.

The guest reaches CM at 10.0.2.100:8093 through qemu's user networking with restrict=on and a
guestfwd to this CM's loopback port, and this side's blob server at 10.0.2.100:8094 the same way:
no other traffic leaves the guest, none leaves the host.

Passes when SMInfo arrives with ArchInfo aarch64/v8 and a DMIPS figure equal to what the probe in
the guest computed from its Cortex-A53 cores (CPU part 0xd03, no cpufreq under QEMU: the clock is
the documented guess), and the probe's JSON on the console names those cores; then CM's
UpdateNetworks lists a network with vlan_id 42 and UpdateInstances starts an instance of it (an
image of the guest's own static busybox): a network's links exist only while an instance of it is
attached, so the VLAN link must appear on the uplink eth0 with that instance, and go with its stop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "tests"))
sys.path.insert(0, str(PROJECT / "tests" / "launcher"))

from contract_cm import ContractCM, ContractCMError  # noqa: E402
from oci_fixture import BlobServer, build_image, busybox_layer  # noqa: E402

from aos_sm.hw.cpu import GUESSED_MHZ  # noqa: E402
from aos_sm.hw.dmips_table import dmips_per_mhz_for_arm  # noqa: E402

GUEST_CM = "10.0.2.100:8093"
GUEST_BLOBS = "10.0.2.100:8094"
CPUS = 2
SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
VLAN_NETWORK = {"networkId": "net-vlan", "subnet": "172.30.0.0/16", "ip": "172.30.0.1", "vlanId": 42}


class BootCheckFailed(Exception):
    """The guest did not register as expected; the message says what was seen."""


def qemu_command(args: argparse.Namespace, cm_port: int, blob_port: int) -> list[str]:
    guest_host, guest_port = GUEST_CM.split(":")
    blob_host, blob_guest_port = GUEST_BLOBS.split(":")
    relay = shutil.which("busybox")  # busybox-static: .ci/run installs it for the launcher tests
    if relay is None:
        raise BootCheckFailed("no busybox on this host to relay the guest's blob downloads (busybox nc)")
    return [
        "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-smp", str(CPUS), "-m", "1024",
        "-accel", "tcg", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{args.console}",
        "-kernel", str(args.kernel), "-initrd", str(args.initrd),
        "-append", "console=ttyAMA0 panic=-1 loglevel=4",
        "-drive", f"file={args.disk},format=raw,if=none,id=root",
        "-device", "virtio-blk-device,drive=root",
        "-netdev", f"user,id=net,restrict=on,"
                   f"guestfwd=tcp:{guest_host}:{guest_port}-tcp:127.0.0.1:{cm_port},"
                   # A tcp: chardev is one connection made at qemu's start (enough for CM's one
                   # stream); blob downloads open one per request: a relay per connection.
                   f"guestfwd=tcp:{blob_host}:{blob_guest_port}-cmd:{relay} nc 127.0.0.1 {blob_port}",
        "-device", "virtio-net-device,netdev=net",
    ]


def console_probe(console: Path) -> dict[str, Any] | None:
    text = console.read_text(errors="replace") if console.exists() else ""
    begin, end = text.find("@@probe-begin@@"), text.find("@@probe-end@@")
    if begin < 0 or end < begin:
        return None
    body = text[begin + len("@@probe-begin@@"):end].replace("\r", "")
    return json.loads(body)  # type: ignore[no-any-return]


def console_line(console: Path, marker: str) -> str | None:
    """The rest of the guest's first console line starting with ``marker`` (S99probe-console)."""
    text = console.read_text(errors="replace") if console.exists() else ""
    for line in text.replace("\r", "").splitlines():
        if line.startswith(marker):
            return line[len(marker):].strip()
    return None


def vlan_instance(image_digest: str, runtime_id: str) -> dict[str, Any]:
    return {"instance": {"itemId": "vlan-probe", "subjectId": "boot", "instance": "0"}, "version": "1.0.0",
            "manifestDigest": image_digest, "runtimeId": runtime_id,
            "networkParameters": {"networkId": VLAN_NETWORK["networkId"], "subnet": VLAN_NETWORK["subnet"],
                                  "ip": "172.30.0.2"}}


def check(args: argparse.Namespace) -> str:
    deadline = time.monotonic() + args.timeout
    image = build_image([busybox_layer(args.busybox)], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    blobs = BlobServer(args.console.parent / "blobs")
    with ContractCM() as cm:
        guest_blobs = f"http://{GUEST_BLOBS}/"
        cm.blob_urls.update({digest: guest_blobs + url.rsplit("/", 1)[1] for digest, url in blobs.publish(image).items()})
        command = qemu_command(args, cm.port, urlsplit(blobs.url("sha256:0")).port or 0)
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
            return f"{summary}; {check_vlan(args, session, sm_info, image.manifest_digest, deadline, qemu)}"
        finally:
            blobs.close()
            qemu.terminate()
            try:
                qemu.wait(timeout=30)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait()


def check_vlan(args: argparse.Namespace, session: Any, sm_info: Any, image_digest: str, deadline: float,
               qemu: "subprocess.Popen[bytes]") -> str:
    """A provider network with a VLAN and an instance of it: the agent puts a vlan-<8 hex> link on
    its uplink with the network's first instance, and takes it down with its last."""
    def remaining() -> float:
        return max(1.0, deadline - time.monotonic())

    def console_wait(marker: str) -> str | None:
        seen = None
        while seen is None and time.monotonic() < deadline and qemu.poll() is None:
            seen = console_line(args.console, marker)
            if seen is None:
                time.sleep(2)
        return seen

    session.wait_for("node_instances_status", timeout=remaining())  # the agent's first report
    session.send("update_networks", {"networks": [VLAN_NETWORK]})
    instance = vlan_instance(image_digest, sm_info.runtimes[0].runtime_id)
    session.send("update_instances", {"startInstances": [instance]})
    batch = session.wait_for("node_instances_status", timeout=remaining())
    states = [(s.instance.item_id, s.state, s.error.message) for s in batch.instances]
    if [state[:2] for state in states] != [("vlan-probe", "active")]:
        raise BootCheckFailed(f"the instance of network net-vlan did not start: {states}")
    vlan = console_wait("@@vlan@@")
    if vlan is None or "@eth0" not in vlan:
        raise BootCheckFailed(f"no VLAN link on the uplink with an instance of the network (console: {vlan!r})")
    session.send("update_instances", {"stopInstances": [instance["instance"]]})
    session.wait_for("node_instances_status", timeout=remaining())
    if console_wait("@@vlan-gone@@") is None:
        raise BootCheckFailed("the VLAN link stayed after the network's last instance stopped")
    return f"VLAN link {vlan.split(':')[1].strip()} on eth0 with the network's instance, gone at its stop"


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
    parser.add_argument("--busybox", type=Path, required=True,
                        help="the guest's static busybox (arm64): the image of the VLAN check's instance")
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
