"""``aos-sm demo``: the agent and the CM simulator on loopback, told as a story a newcomer can follow.

Everything is real: a gRPC server on 127.0.0.1, the agent connecting to it, the node's hardware
probe, a node config stored in a temporary working directory. Where the machine can run
containers (root, runc, cgroups) a real service is deployed: a tiny OCI image built here
(agent/demo_image.py), served by the simulator's own blob server, started with runc, watched in
monitoring, its log fetched, then stopped. Where it cannot, those steps are skipped with the
reason. The agent's log goes to a file (named at the end), or to stderr with ``--verbose``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, List, Optional, TextIO, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .app import Agent, build_agent, describe
from .cmsim import SimSession, SimulatedCM, command_message, instance_ident, start_instance
from .config import parse_config
from .demo_image import GREETING, OCI_RUNTIMES, demo_image, host_architecture, real_service_problem
from .errors import AosCode
from .story import Story, logs_to_file

In = sm_pb2.SMIncomingMessages


# A node config step: its title, its why, CM's message, what the reply shows, and the verdict on
# the reply: (why it failed or "", the outcome's detail).
NodeConfigStep = Tuple[str, str, "sm_pb2.SMIncomingMessages", Callable[[Any], str], Callable[[Any], Tuple[str, str]]]


def _node_config_steps(install: "sm_pb2.SMIncomingMessages") -> List[NodeConfigStep]:
    malformed = In(check_node_config=sm_pb2.CheckNodeConfig(node_config="{not json", version="1.0.0"))
    return [
        ("CM asks for the node config status (GetNodeConfigStatus)",
         "A node config is a versioned JSON document from the cloud (node group, alert rules, resources). CM "
         "asks which version this node has.",
         command_message("get-config"),
         lambda r: f"state {r.state}, version {r.version or 'none'}, {error_text(r.error)}",
         lambda r: ("", "absent: no node config installed yet" if r.state == "absent" else "")),
        ("CM checks a malformed node config (CheckNodeConfig)",
         "Before installing, CM can have the SM check a config. A bad one gets an error in the reply; the "
         "stream stays up.",
         malformed,
         lambda r: error_text(r.error),
         lambda r: ("" if r.error.aos_code == AosCode.INVALID_ARGUMENT else "expected invalidArgument", "")),
        ("CM installs node config 1.0.0 (SetNodeConfig)",
         "The reply carries the state from before the update (CM's protocol defines it so): \"absent\" here, "
         "since there was none. No error means 1.0.0 is now installed.",
         install,
         lambda r: f"state {r.state} (before), version {r.version}, {error_text(r.error)}",
         lambda r: (error_text(r.error) if r.error.aos_code else "", "installed")),
        ("CM asks again: now installed", "The status now names the installed version.",
         command_message("get-config"),
         lambda r: f"state {r.state}, version {r.version}",
         lambda r: ("" if (r.state, r.version) == ("installed", "1.0.0")
                    else f"expected installed 1.0.0, got {r.state} {r.version}", "")),
        ("CM sends version 1.0.0 again",
         "A version is not installed twice: the SM answers alreadyExist and keeps the config it has.",
         install,
         lambda r: f"state {r.state}, {error_text(r.error)}",
         lambda r: ("" if r.error.aos_code == AosCode.ALREADY_EXIST else "expected alreadyExist", "")),
    ]
SERVICE = "demo-service"
MISSING_RUNTIME = "no-such-runtime"
POLL_PERIOD = "1s"  # monitoring's default is 35 s: too long to watch


def run_demo(timeout: float = 15.0, *, verbose: bool = False, log_file: Optional[Path] = None,
             out: Optional[TextIO] = None) -> int:
    """Run the story; 0 when every step that was tried worked (skipped ones say why)."""
    story = Story(out or sys.stdout)
    with logs_to_file(log_file, verbose) as log_path:
        try:
            _Demo(story, timeout).run()
        except Exception as err:  # the summary must still come, naming what broke
            if not story.is_open:
                story.step("The demo itself", "Something outside the steps went wrong.")
            story.fail(f"{type(err).__name__}: {err}")
    return story.summary(log_path)


def error_text(error: Any) -> str:
    """An ErrorInfo as a person reads it: ``invalidArgument (6): message``."""
    if error.aos_code == 0:
        return "no error"
    try:
        words = AosCode(error.aos_code).name.lower().split("_")
        name = words[0] + "".join(word.title() for word in words[1:])
    except ValueError:
        name = "code"
    return f"{name} ({error.aos_code}){': ' + error.message if error.message else ''}"


def _mib(value: int) -> str:
    return f"{value / (1024 * 1024):.1f} MiB"


def log_text(parts: List[sm_pb2.LogData]) -> str:
    """The text of LogData parts (each a gzip stream), in part order."""
    text = []
    for part in sorted(parts, key=lambda p: p.part):
        try:
            text.append(gzip.decompress(part.data).decode(errors="replace"))
        except (OSError, EOFError, zlib.error):
            text.append("<a part that is not gzip>")
    return "".join(text)


class _Demo:
    def __init__(self, story: Story, timeout: float) -> None:
        self.story = story
        self.timeout = timeout
        self.image = demo_image(host_architecture())
        self.problem = real_service_problem()
        self.cgroup_parent = f"aos-sm-demo-{os.getpid()}"
        self.session: Optional[SimSession] = None
        self.runtime_id = ""
        self.started = False

    # -- plumbing ------------------------------------------------------------------------------

    def exchange(self, message: sm_pb2.SMIncomingMessages, kind: str, where: Callable[[Any], bool] = lambda _inner: True,
                 timeout: Optional[float] = None) -> Any:
        """Send ``message``; the first ``kind`` reply after it that ``where`` accepts, or None."""
        assert self.session is not None
        seen = len(self.session.received)
        self.session.send(message)
        return self.session.wait_for(kind, timeout or self.timeout, after=seen, where=where)

    def statuses_of(self, item: str, after: int) -> List[sm_pb2.InstanceStatus]:
        assert self.session is not None
        return [status for message in self.session.received[after:]
                if message.WhichOneof("SMOutgoingMessage") == "update_instances_status"
                for status in message.update_instances_status.instances if status.instance.item_id == item]

    def wait_state(self, item: str, states: Tuple[str, ...], after: int, timeout: float) -> Optional[sm_pb2.InstanceStatus]:
        assert self.session is not None
        reply = self.session.wait_for(
            "update_instances_status", timeout, after=after,
            where=lambda m: any(s.instance.item_id == item and s.state in states for s in m.instances))
        if reply is None:
            return None
        found: sm_pb2.InstanceStatus = next(s for s in reply.instances if s.instance.item_id == item and s.state in states)
        return found

    def show_statuses(self, item: str, after: int) -> None:
        for status in self.statuses_of(item, after):
            self.story.say(f"UpdateInstancesStatus: {item} {status.state}"
                           f"{', ' + error_text(status.error) if status.error.aos_code else ''}", "SM")

    # -- the story -----------------------------------------------------------------------------

    def run(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="aos-sm-demo-"))
        simulator = SimulatedCM()
        agent: Optional[Agent] = None
        try:
            self.story.step(
                "Start a CM simulator and the agent, on this machine's loopback",
                "On a unit, the SM (this agent, one per node) connects to the unit's Communication Manager (CM), "
                "which decides what runs where. Here CM is a simulator; the agent is the real one, in a temporary "
                "working directory.")
            urls = simulator.serve(self.image)
            simulator.start()
            agent = build_agent(parse_config(json.dumps({
                "cmServerURL": simulator.address, "tlsMode": "plaintext", "workingDir": str(workdir),
                "resourcesConfigFile": str(workdir / "resources.cfg"), "cmReconnectTimeout": "1s",
                "cgroupParent": self.cgroup_parent,
                "monitoring": {"pollPeriod": POLL_PERIOD, "averageWindow": POLL_PERIOD},
                # A try-out on any machine: no namespaces, no firewall table of ours on its network.
                "network": {"enabled": False},
            })))
            for line in describe(agent):
                self.story.say(line, "SM")
            self.story.say(f"working dir {workdir}, cgroups under {self.cgroup_parent} (both removed at the end)")
            self.story.say(f"serving the demo image {self.image.manifest_digest[:19]}… at "
                           f"{urls[self.image.manifest_digest].rsplit('/', 1)[0]}/", "CM")
            agent.start()
            self.session = simulator.wait_session(1, self.timeout)
            if self.session is None:
                self.story.fail(f"the agent did not connect to {simulator.address} within {self.timeout:.0f} s")
                return
            self.story.ok(f"the agent connected to the simulator at {simulator.address}")
            if not self.registration():
                return
            self.node_config()
            self.missing_runtime()
            self.real_service(simulator, agent)
            self.system_log(agent)
        finally:
            if agent is not None:
                if self.started:
                    agent.launcher.stop_all_instances()
                agent.stop()
            simulator.stop(0)
            self.clean_up(workdir)

    def registration(self) -> bool:
        assert self.session is not None
        self.story.step(
            "The SM registers: SMInfo",
            "On every connect the SM first tells CM what the node offers: its runtimes (the OCI runtimes that run "
            "services; CM places a service by runtime id), CPU in DMIPS (the capacity unit CM schedules with) and "
            "RAM.")
        sm_info = self.session.wait_for("sm_info", self.timeout)
        if sm_info is None:
            self.story.fail("no SMInfo")
            return False
        self.story.say(f"SMInfo: node {sm_info.node_id}", "SM")
        for runtime in sm_info.runtimes:
            self.story.say(f"runtime {runtime.type}, id {runtime.runtime_id}: {runtime.max_dmips} DMIPS, "
                           f"{runtime.total_ram // (1024 * 1024)} MiB RAM, up to {runtime.max_instances} instances")
        if not sm_info.runtimes:
            self.story.say("no runtime: this node can run no service (see the agent's log for why)")
        oci = [r for r in sm_info.runtimes if r.type in OCI_RUNTIMES]
        self.runtime_id = oci[0].runtime_id if oci else ""
        self.story.ok()

        self.story.step(
            "...then NodeInstancesStatus: the instances running here",
            "CM compares it with what it wants on this node; a fresh node runs none.")
        status = self.session.wait_for("node_instances_status", self.timeout)
        if status is None:
            self.story.fail("no NodeInstancesStatus")
            return False
        self.story.say(f"NodeInstancesStatus: {len(status.instances)} instance(s)", "SM")
        self.story.ok()

        self.story.step(
            "CM says the cloud is connected (ConnectionStatus)",
            "The SM keeps instances running while the unit is offline, each up to its offline TTL; CM tells it "
            "when the cloud comes and goes. This message has no reply.")
        self.session.send(command_message("cloud on"))
        self.story.say("ConnectionStatus: connected", "CM")
        self.story.ok("sent")
        return True

    def node_config(self) -> None:
        good = json.dumps({"version": "1.0.0", "nodeGroupSubject": {"codename": "demo-group"},
                           "alertRules": {"ram": {"minTimeout": "PT5S", "minThreshold": 80, "maxThreshold": 95}}})
        install = In(set_node_config=sm_pb2.SetNodeConfig(node_config=good, version="1.0.0"))
        for title, why, message, show, verdict in _node_config_steps(install):
            self.story.step(title, why)
            reply = self.exchange(message, "node_config_status")
            if reply is None:
                self.story.fail("no NodeConfigStatus")
                continue
            self.story.say(f"NodeConfigStatus: {show(reply)}", "SM")
            failure, detail = verdict(reply)
            if failure:
                self.story.fail(failure)
            else:
                self.story.ok(detail)

    def missing_runtime(self) -> None:
        assert self.session is not None
        self.story.step(
            "CM starts a service on a runtime this node does not have (UpdateInstances)",
            "Each instance names the runtime (from SMInfo) to run on. The SM answers with the instance's statuses: "
            "activating, then active or failed; with a runtime it does not have, failed, and why.")
        seen = len(self.session.received)
        self.session.send(start_instance("ghost-service", MISSING_RUNTIME, self.image.manifest_digest))
        self.story.say(f"UpdateInstances: start ghost-service on runtime {MISSING_RUNTIME!r}", "CM")
        failed = self.wait_state("ghost-service", ("failed",), seen, self.timeout)
        self.show_statuses("ghost-service", seen)
        if failed is None:
            self.story.fail("no failed status")
        else:
            self.story.ok("failed, as it should")

    def real_service(self, simulator: SimulatedCM, agent: Agent) -> None:
        titles = [
            ("CM starts a real service: the demo image",
             "CM sends the image's manifest digest; the SM asks CM where its blobs are (GetBlobsInfos), downloads and "
             "checks them, unpacks the image and runs it with runc in a cgroup of its own. The image was built "
             "here: one layer holding a shell script, served by the simulator over HTTP."),
            ("InstantMonitoring shows the service's CPU and RAM",
             f"Every poll period ({POLL_PERIOD} here, 35 s by default) the SM sends the node's and each instance's "
             "usage: CPU in DMIPS, RAM in bytes (the instance's cgroup)."),
            ("CM fetches the service's log (InstanceLogRequest)",
             "The SM keeps what each instance prints; a log request gets it back in gzip parts (LogData), "
             "numbered from 1."),
            ("CM stops the service",
             "UpdateInstances with stop_instances: the SM stops the container, answers inactive, then a "
             "NodeInstancesStatus without it."),
        ]
        problem = self.problem
        if problem is None and not self.runtime_id:
            problem = f"the agent registered no OCI runtime ({', '.join(OCI_RUNTIMES)}); its log says why"
        if problem is not None:
            for title, why in titles:
                self.story.skip_step(title, why, problem)
            return
        if not self.start_service(simulator, *titles[0]):
            for title, why in titles[1:]:
                self.story.skip_step(title, why, "the service did not start")
            return
        self.monitoring(*titles[1])
        self.instance_log(*titles[2])
        self.stop_service(*titles[3])

    def start_service(self, simulator: SimulatedCM, title: str, why: str) -> bool:
        assert self.session is not None
        self.story.step(title, why)
        blobs = len(self.image.blobs)
        self.story.say(f"UpdateInstances: start {SERVICE} on runtime {self.runtime_id}, image "
                       f"{self.image.manifest_digest[:19]}… ({blobs} blobs)", "CM")
        seen, asked = len(self.session.received), len(simulator.blob_requests)
        self.started = True
        self.session.send(start_instance(SERVICE, self.runtime_id, self.image.manifest_digest))
        reached = self.wait_state(SERVICE, ("active", "failed"), seen, max(self.timeout, 60.0))
        for digests in simulator.blob_requests[asked:]:
            self.story.say(f"GetBlobsInfos for {len(digests)} digest(s); the simulator answers with its URLs", "SM")
        self.show_statuses(SERVICE, seen)
        if reached is None or reached.state != "active":
            self.story.fail(error_text(reached.error) if reached is not None else "no active status")
            return False
        self.story.ok("active")
        return True

    def monitoring(self, title: str, why: str) -> None:
        assert self.session is not None
        self.story.step(title, why)
        report = self.session.wait_for(
            "instant_monitoring", max(self.timeout, 10.0), after=0,
            where=lambda m: any(i.instance.item_id == SERVICE and i.monitoring_data.ram > 0
                                for i in m.instances_monitoring))
        if report is None:
            self.story.fail(f"no InstantMonitoring with {SERVICE} and its RAM")
            return
        node = report.node_monitoring
        self.story.say(f"InstantMonitoring: node CPU {node.cpu} DMIPS, RAM {_mib(node.ram)}", "SM")
        mine = next(i for i in report.instances_monitoring if i.instance.item_id == SERVICE)
        self.story.say(f"{SERVICE}: CPU {mine.monitoring_data.cpu} DMIPS, RAM {_mib(mine.monitoring_data.ram)}")
        self.story.ok()

    def instance_log(self, title: str, why: str) -> None:
        assert self.session is not None
        self.story.step(title, why)
        deadline = time.monotonic() + self.timeout
        attempt, text = 0, ""
        parts: List[sm_pb2.LogData] = []
        while GREETING not in text and time.monotonic() < deadline:
            attempt += 1
            correlation = f"demo-log-{attempt}"
            request = command_message(f"log {SERVICE} {correlation}")
            first = self.exchange(request, "log", where=_correlated(correlation))
            if first is None:
                break
            parts = self._log_parts(correlation, first)
            text = log_text(parts)
            if GREETING not in text:
                time.sleep(0.5)  # the service's first line is not in its log yet
        self.story.say(f"InstanceLogRequest {SERVICE}", "CM")
        if not parts:
            self.story.fail("no LogData")
            return
        self.story.say(f"LogData: {len(parts)} part(s), status {parts[0].status}; the log:", "SM")
        lines = text.splitlines()
        for line in lines[:4]:
            self.story.say(f"| {line}")
        if len(lines) > 4:
            self.story.say(f"| ... {len(lines) - 4} more line(s)")
        self.story.ok() if GREETING in text else self.story.fail("the service's greeting is not in its log")

    def _log_parts(self, correlation: str, first: sm_pb2.LogData) -> List[sm_pb2.LogData]:
        assert self.session is not None
        parts = [first]
        while len(parts) < first.part_count:
            more = self.session.wait_for("log", self.timeout, where=lambda m: m.correlation_id == correlation
                                         and m.part not in {p.part for p in parts})
            if more is None:
                break
            parts.append(more)
        return parts

    def stop_service(self, title: str, why: str) -> None:
        assert self.session is not None
        self.story.step(title, why)
        seen = len(self.session.received)
        self.session.send(In(update_instances=sm_pb2.UpdateInstances(stop_instances=[instance_ident(SERVICE)])))
        self.story.say(f"UpdateInstances: stop {SERVICE}", "CM")
        stopped = self.wait_state(SERVICE, ("inactive", "failed"), seen, max(self.timeout, 30.0))
        self.show_statuses(SERVICE, seen)
        batch = self.session.wait_for("node_instances_status", self.timeout, after=seen,
                                      where=lambda m: all(s.instance.item_id != SERVICE for s in m.instances))
        if batch is not None:
            left = ", ".join(f"{s.instance.item_id} {s.state}" for s in batch.instances)
            self.story.say(f"NodeInstancesStatus: {left or 'no instance'}"
                           f"{' (the failed one from before stays listed until CM stops it)' if left else ''}",
                           "SM")
        if stopped is None or stopped.state != "inactive":
            self.story.fail(error_text(stopped.error) if stopped is not None else "no inactive status")
        else:
            self.started = False
            self.story.ok("inactive")

    def system_log(self, agent: Agent) -> None:
        self.story.step(
            "CM asks for the system log (SystemLogRequest)",
            "The node's own log (journald, or a syslog file), sent in gzip parts like an instance's.")
        source = agent.config.system_log or ""
        if source != "journald" and not Path(source).exists():
            self.story.skip(f"this machine has no journald (its socket or journalctl is missing) and no {source}; "
                            "set logging.systemLog to a syslog file to have one read")
            return
        reply = self.exchange(command_message("system-log demo-system-log"), "log")
        if reply is None:
            self.story.fail("no LogData")
            return
        self.story.say(f"LogData: part {reply.part} of {reply.part_count}, status {reply.status}, "
                       f"{error_text(reply.error)} (from {source})", "SM")
        self.story.ok() if reply.status in ("ok", "empty") else self.story.fail(error_text(reply.error))

    # -- cleaning up ---------------------------------------------------------------------------

    def clean_up(self, workdir: Path) -> None:
        """Unmount what the launcher left under the working dir (its roots tmpfs stays for the
        agent's life), then remove it; never remove through a mount."""
        for point in sorted(_mounts_under(workdir), key=len, reverse=True):
            try:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)
            except (OSError, subprocess.SubprocessError):
                break  # no umount here: the check below keeps the directory
        if _mounts_under(workdir):
            print(f"demo: {workdir} is kept: something is still mounted under it", file=self.story.out)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        for hierarchy in _cgroup_hierarchies():
            top = hierarchy / self.cgroup_parent
            if top.is_dir():
                for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                        reverse=True) + [top]:
                    try:
                        directory.rmdir()
                    except OSError:
                        pass


def _correlated(correlation: str) -> Callable[[Any], bool]:
    return lambda message: bool(message.correlation_id == correlation)


def _mounts_under(path: Path) -> List[str]:
    prefix = str(path.resolve())
    try:
        table = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    points = [line.split()[4] for line in table.splitlines() if len(line.split()) > 4]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def _cgroup_hierarchies() -> List[Path]:
    root = Path("/sys/fs/cgroup")
    try:
        return [root] + [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
