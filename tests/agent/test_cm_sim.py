"""`aos-sm cm-sim`: a person types commands, sees what the SM sends."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from queue import Empty, Queue
from typing import IO, Callable, Dict, Iterator, List

import pytest

from tls import TLSMaterial

from aos_sm.agent.app import Agent
from aos_sm.agent.demo_image import demo_image, host_architecture, real_service_problem, sha256
from aos_sm.agent.ocilayout import write_oci_layout

CM_SIM = [sys.executable, "-m", "aos_sm.agent.cli", "cm-sim"]


def lines_of(stream: IO[str]) -> "Queue[str]":
    lines: "Queue[str]" = Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def wait_line(lines: "Queue[str]", pattern: str, timeout: float = 15.0) -> str:
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except Empty:
            raise AssertionError(f"no line matching {pattern!r}; saw {seen}") from None
        seen.append(line)
        if re.search(pattern, line):
            return line


def test_cm_sim_prints_what_the_sm_sends_and_sends_typed_commands(
    tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "aos_sm.agent.cli", "cm-sim", "--listen", "127.0.0.1:0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert sim.stdin is not None and sim.stdout is not None and sim.stderr is not None
        errors = lines_of(sim.stderr)
        address = re.search(r"listening on (\S+);", wait_line(errors, "listening on"))
        assert address is not None
        # Without --image it serves its own image, and says so.
        assert "built-in demo image" in wait_line(errors, "^serving ")
        out = lines_of(sim.stdout)
        start_agent(address.group(1), nodeId="typed-node")
        sm_info = json.loads(wait_line(out, r'"smInfo"').split("] ", 1)[1])
        assert sm_info["smInfo"]["nodeId"] == "typed-node"
        wait_line(out, r'"nodeInstancesStatus"')
        sim.stdin.write("get-config\n")
        sim.stdin.flush()
        status = json.loads(wait_line(out, r'"nodeConfigStatus"').split("] ", 1)[1])
        assert status["nodeConfigStatus"]["state"] == "absent"
        sim.stdin.write("set-config 2.0.0\n")
        sim.stdin.flush()
        applied = json.loads(wait_line(out, r'"nodeConfigStatus"').split("] ", 1)[1])
        assert applied["nodeConfigStatus"]["version"] == "2.0.0"
        assert applied["nodeConfigStatus"]["error"] == {} or applied["nodeConfigStatus"]["error"].get("aosCode", 0) == 0
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=10) == 0
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()


def one_line_exit_2(args: List[str], cwd: Path) -> str:
    """Run cm-sim with bad ``args``: it must exit 2 with exactly one line on stderr, no traceback."""
    result = subprocess.run([*CM_SIM, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=30, cwd=cwd)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aos-sm cm-sim: "), (args, result.stderr)
    assert result.stdout == ""
    return lines[0]


def _not_pem(tmp_path: Path) -> Path:
    path = tmp_path / "not.pem"
    path.write_text("hello\n")
    return path


def _bad_layout(tmp_path: Path, what: str) -> Path:
    root = tmp_path / what
    root.mkdir()
    if what == "index-not-json":
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (root / "index.json").write_text("{nope")
    elif what == "missing-blob":
        image = demo_image()
        write_oci_layout(root, {d: b for d, b in image.blobs.items() if isinstance(b, bytes)}, image.manifest_digest)
        layer = json.loads(image.blobs[image.manifest_digest])["layers"][0]["digest"]  # type: ignore[arg-type]
        (root / "blobs" / "sha256" / layer.split(":")[1]).unlink()
    elif what in ("zstd-layer", "multi-platform"):
        image = demo_image()
        blobs = {d: b for d, b in image.blobs.items() if isinstance(b, bytes)}
        manifest = json.loads(blobs.pop(image.manifest_digest))
        if what == "zstd-layer":
            manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:  # an index naming the manifest, as a multi-platform copy has
            blobs[sha256(json.dumps(manifest).encode())] = json.dumps(manifest).encode()
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": sha256(json.dumps(manifest).encode()), "size": 1}]}
        data = json.dumps(manifest).encode()
        blobs[sha256(data)] = data
        write_oci_layout(root, blobs, sha256(data))
        if what == "multi-platform":
            index = json.loads((root / "index.json").read_text())
            index["manifests"][0]["mediaType"] = "application/vnd.oci.image.index.v1+json"
            (root / "index.json").write_text(json.dumps(index))
    return root


@pytest.mark.parametrize("case", [
    "listen-bogus", "listen-port-only", "listen-port-too-big", "listen-unknown-host", "listen-not-ours",
    "cert-missing", "key-missing", "cert-without-key", "cert-is-a-directory", "cert-not-pem", "key-not-matching",
    "ca-missing", "ca-not-pem", "ca-without-cert", "image-not-a-dir", "image-no-oci-layout", "image-index-not-json",
    "image-missing-blob", "image-ref-unknown", "image-ref-without-image", "image-zstd-layer", "image-multi-platform",
])
def test_every_bad_argument_is_one_line_and_exit_2(case: str, tmp_path: Path, tls_material: TLSMaterial) -> None:
    server, client = tls_material.server, tls_material.client
    missing = str(tmp_path / "missing.pem")
    good = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    args: Dict[str, Callable[[], List[str]]] = {  # built only for the case at hand
        "listen-bogus": lambda: ["--listen", "bogus"],
        "listen-port-only": lambda: ["--listen", "8093"],
        "listen-port-too-big": lambda: ["--listen", "127.0.0.1:70000"],
        "listen-unknown-host": lambda: ["--listen", "no-such-host.invalid:8093"],
        "listen-not-ours": lambda: ["--listen", "192.0.2.1:8093"],  # TEST-NET-1: never this machine's
        "cert-missing": lambda: ["--tls-cert", missing, "--tls-key", str(server.key)],
        "key-missing": lambda: ["--tls-cert", str(server.cert), "--tls-key", missing],
        "cert-without-key": lambda: ["--tls-cert", str(server.cert)],
        "cert-is-a-directory": lambda: ["--tls-cert", str(tmp_path), "--tls-key", str(server.key)],
        "cert-not-pem": lambda: ["--tls-cert", str(_not_pem(tmp_path)), "--tls-key", str(server.key)],
        "key-not-matching": lambda: ["--tls-cert", str(server.cert), "--tls-key", str(client.key)],
        "ca-missing": lambda: [*good, "--tls-ca", missing],
        "ca-not-pem": lambda: [*good, "--tls-ca", str(_not_pem(tmp_path))],
        "ca-without-cert": lambda: ["--tls-ca", str(tls_material.ca.cert)],
        "image-not-a-dir": lambda: ["--image", str(tmp_path / "nothing")],
        "image-no-oci-layout": lambda: ["--image", str(tmp_path)],
        "image-index-not-json": lambda: ["--image", str(_bad_layout(tmp_path, "index-not-json"))],
        "image-missing-blob": lambda: ["--image", str(_bad_layout(tmp_path, "missing-blob"))],
        "image-ref-unknown": lambda: ["--image", str(layout_of_demo_image(tmp_path / "layout")), "--image-ref", "other"],
        "image-ref-without-image": lambda: ["--image-ref", "demo"],
        "image-zstd-layer": lambda: ["--image", str(_bad_layout(tmp_path, "zstd-layer"))],
        "image-multi-platform": lambda: ["--image", str(_bad_layout(tmp_path, "multi-platform"))],
    }
    # Anything that got past the arguments would listen: on a free port of loopback, never 8093.
    line = one_line_exit_2(args[case]() + (["--listen", "127.0.0.1:0"] if not case.startswith("listen") else []),
                           tmp_path)
    expected = {"listen": "--listen", "cert": "--tls-", "key": "--tls-", "ca": "--tls-ca", "image": "--image"}
    assert expected[case.split("-")[0]] in line or "cannot listen" in line, line


def layout_of_demo_image(root: Path, ref: str = "demo:1") -> Path:
    image = demo_image(host_architecture())
    write_oci_layout(root, {d: b for d, b in image.blobs.items() if isinstance(b, bytes)}, image.manifest_digest,
                     ref=ref)
    return root


@pytest.fixture
def simulators() -> Iterator[Callable[..., "subprocess.Popen[str]"]]:
    started: List["subprocess.Popen[str]"] = []

    def start(*args: str) -> "subprocess.Popen[str]":
        process = subprocess.Popen([*CM_SIM, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def listening_address(sim: "subprocess.Popen[str]") -> str:
    assert sim.stderr is not None
    found = re.search(r"listening on (\S+);", wait_line(lines_of(sim.stderr), "listening on"))
    assert found is not None
    return found.group(1)


def test_a_second_simulator_on_a_port_in_use_is_refused(simulators: Callable[..., "subprocess.Popen[str]"],
                                                         tmp_path: Path) -> None:
    first = simulators("--listen", "127.0.0.1:0")
    address = listening_address(first)
    line = one_line_exit_2(["--listen", address], tmp_path)
    assert "in use" in line
    assert first.poll() is None  # the first one is untouched
    # A port some other program holds is refused the same way.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        assert "in use" in one_line_exit_2(["--listen", f"127.0.0.1:{other.getsockname()[1]}"], tmp_path)


def _mounts_under(path: Path) -> List[str]:
    prefix = str(path) + "/"
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]


@pytest.mark.system
def test_start_deploys_the_image_of_an_oci_layout_until_active_and_stop_ends_it(
    simulators: Callable[..., "subprocess.Popen[str]"], start_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    problem = real_service_problem()
    if problem is not None:
        pytest.skip(f"cm-sim system test skipped because {problem}")
    layout = layout_of_demo_image(tmp_path / "layout", ref="demo:1")
    sim = simulators("--listen", "127.0.0.1:0", "--image", str(layout), "--image-ref", "demo:1")
    assert sim.stdin is not None and sim.stdout is not None and sim.stderr is not None
    errors = lines_of(sim.stderr)
    address = re.search(r"listening on (\S+);", wait_line(errors, "listening on"))
    assert address is not None
    digest = demo_image(host_architecture()).manifest_digest
    assert f"{layout}:demo:1" in wait_line(errors, "^serving ") and digest
    out = lines_of(sim.stdout)
    cgroup_parent = f"aos-sm-test-cmsim-{uuid.uuid4().hex[:8]}"
    agent = start_agent(address.group(1), nodeId="cmsim-node", cgroupParent=cgroup_parent)
    try:
        sm_info = json.loads(wait_line(out, r'"smInfo"').split("] ", 1)[1])["smInfo"]
        wait_line(out, r'"nodeInstancesStatus"')
        sim.stdin.write("start my-service\n")
        sim.stdin.flush()
        # The runtime is the SM's first, and the simulator says so.
        said = wait_line(errors, "^start my-service: ")
        assert sm_info["runtimes"][0]["runtimeId"] in said and "first" in said and digest in said
        states = []
        while "active" not in states and "failed" not in states:
            status = json.loads(wait_line(out, r'"updateInstancesStatus"', timeout=60).split("] ", 1)[1])
            states += [s["state"] for s in status["updateInstancesStatus"]["instances"]
                       if s["instance"]["itemId"] == "my-service"]
        assert states == ["activating", "active"], states
        sim.stdin.write("log my-service\n")
        sim.stdin.flush()
        assert "hello from the aos-sm demo service" in wait_line(errors, "hello from the aos-sm demo service")
        sim.stdin.write("stop my-service\n")
        sim.stdin.flush()
        stopped = json.loads(wait_line(out, r'"updateInstancesStatus"', timeout=30).split("] ", 1)[1])
        assert [s["state"] for s in stopped["updateInstancesStatus"]["instances"]] == ["inactive"]
    finally:
        agent.launcher.stop_all_instances()
        agent.stop(timeout=5.0)
        for point in sorted(_mounts_under(tmp_path), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
        for hierarchy in [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()]:
            for directory in sorted((hierarchy / cgroup_parent).glob("**/"), key=lambda p: len(p.parts),
                                    reverse=True):
                try:
                    directory.rmdir()
                except OSError:
                    pass
