"""One registration: probes + config -> SMInfo, for `aos-sm run` and `aos-sm probe` alike.

Theory of operation:
- ``discover(config, root)`` is the only place that looks at the host for registration: it
  probes capacity, OS and architecture under ``root``, fills in what the config left unset
  (node id from ``etc/machine-id``, else the hostname; the OCI runtimes installed there; the
  system log) and judges which runtimes can run. It runs once per process.
- ``plan_registration(node, resources)`` is pure: it applies the capacity semantics and CM's
  limits (PROTOCOL.md "Capacity semantics", "Limits of the real CM") and returns the SMInfo
  with every cut named, so the agent logs and alerts them and `probe` prints them.
- With IAM (``iamPublicServerURL``), ``discover`` gets IAM's node info, read before CM is
  contacted, and merges it first (agent/iam/merge.py: IAM wins over the probes, the operator's
  config over IAM with a warning); IAM's total RAM and OS name replace the probed ones.
- ``load_node_resources`` reads ``resourcesConfigFile`` under the root on every connect, so an
  operator's fix applies at the next session.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from aos_sm import hw
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .capacity import UsableRuntimes, probe_capacity, runtime_unusable, usable_runtimes
from .config import (JOURNALD, MAX_ARCH_CHARS, MAX_ID_CHARS, MAX_OS_VERSION_CHARS, OCI_RUNTIMES, AgentConfig,
                     RuntimeSettings)
from .errors import ConfigError
from .iam.merge import IAM_SOURCE, MergedNode, merge_node_info, source_of
from .iam.port import IamNodeInfo
from .sminfo import Platform, RuntimeCapacity, build_sm_info

LIVE_ROOT = Path("/")
SYSLOG_FILE = "/var/log/messages"

# CM's fixed-size arrays (aos_core_lib_cpp v9.0.0; PROTOCOL.md "Limits of the real CM"). Over
# them, the real CM drops the whole SMInfo and the node never registers.
MAX_RUNTIMES = 4
MAX_RESOURCES = 4
MAX_OS_NAME_CHARS = 16
MAX_FEATURES = 16
MAX_FEATURE_CHARS = 64

# Where programs live in a root that is not this machine's (a board image or fixture tree).
_BIN_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")

Which = Callable[[str], Optional[str]]


@dataclass(frozen=True)
class Node:
    """What discovery found: the config completed from the host, and what the node can do."""

    config: AgentConfig  # node_id, runtimes and system_log filled in
    capacity: hw.NodeCapacity
    runtimes: UsableRuntimes
    root: Path
    iam: Optional[MergedNode] = None  # IAM's node info as merged, when the node has an IAM
    measured_total_ram: int = 0  # the probe's MemTotal, also when IAM's total_ram replaces it


@dataclass(frozen=True)
class CapacityFigure:
    value: int
    source: str  # where the figure comes from, for people (probe, start log)


@dataclass(frozen=True)
class NodeCapacityReport:
    """The node's capacity as SMInfo states it, whether or not any runtime registers."""

    max_dmips: CapacityFigure
    allowed_dmips: CapacityFigure
    total_ram: CapacityFigure
    allowed_ram: CapacityFigure


@dataclass(frozen=True)
class RegistrationPlan:
    sm_info: sm_pb2.SMInfo
    cuts: Tuple[str, ...]  # what CM's limits left out of SMInfo, one line each
    capacity: NodeCapacityReport


# ---------------------------------------------------------------------------------------------
# Discovery: the host, once, under the root
# ---------------------------------------------------------------------------------------------


def is_live(root: Path) -> bool:
    return root.resolve() == LIVE_ROOT


def which_under(root: Path) -> Which:
    """``shutil.which`` on this machine; in another root, its usual program directories."""
    if is_live(root):
        return shutil.which

    def find(name: str) -> Optional[str]:
        for directory in _BIN_DIRS:
            candidate = root / directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return "/" + directory + "/" + name
        return None

    return find


def default_node_id(root: Path) -> str:
    """``etc/machine-id`` where the node has one (systemd, most Buildroot images), else the
    hostname: the root's ``etc/hostname``, this machine's for ``/``, and for an image or fixture
    tree with neither, the tree's directory name."""
    for name in ("etc/machine-id", "etc/hostname"):
        try:
            value = (root / name).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return socket.gethostname() if is_live(root) else root.resolve().name


def detect_runtimes(which: Which, cgroup_mode: str) -> Tuple[str, ...]:
    """The OCI runtimes installed that can run on this cgroup layout. Empty when there is none:
    SMInfo then honestly offers no runtime rather than one that cannot start anything."""
    return tuple(name for name in OCI_RUNTIMES if which(name) and runtime_unusable(name, cgroup_mode) is None)


def detect_system_log(root: Path, which: Which) -> str:
    """``journald`` where it runs (its socket exists) and journalctl can read it, else the file
    busybox syslogd writes on Buildroot images."""
    if (root / "run/systemd/journal/socket").exists() and which("journalctl"):
        return JOURNALD
    return SYSLOG_FILE


def _with_iam_capacity(capacity: hw.NodeCapacity, config: AgentConfig, merged: MergedNode) -> hw.NodeCapacity:
    """IAM's total RAM and OS name in place of the probed ones; the cgroup limit still applies."""
    changes: Dict[str, object] = {}
    if merged.total_ram is not None:
        allowed = merged.total_ram * (1 - config.reserve_ram_percent / 100)
        if capacity.cgroup_limits.memory_limit is not None:
            allowed = min(allowed, capacity.cgroup_limits.memory_limit)
        changes.update(total_ram=merged.total_ram, allowed_ram=int(allowed))
    if merged.os_name is not None:
        changes["os_name"] = merged.os_name
    return dataclasses.replace(capacity, **changes)  # type: ignore[arg-type]


def discover(config: AgentConfig, root: Path = LIVE_ROOT, which: Optional[Which] = None,
             iam: Optional[IamNodeInfo] = None) -> Node:
    """Probe the node under ``root`` and complete ``config`` from IAM's node info (when given)
    and from the probes. Raises ConfigError when the root is not a directory or a setting cannot
    be applied to this node."""
    if not root.is_dir():
        raise ConfigError("--root", f"{root} is not a directory")
    find = which or which_under(root)
    merged = merge_node_info(config, iam) if iam is not None else None
    if merged is not None:
        config = merged.config
    try:
        capacity = probe_capacity(config, root)
    except ValueError as err:
        raise ConfigError("systemReserve", str(err)) from err
    measured_total_ram = capacity.total_ram
    if merged is not None:
        capacity = _with_iam_capacity(capacity, config, merged)
    node_id = config.node_id or default_node_id(root)
    if not node_id or len(node_id) > MAX_ID_CHARS:
        raise ConfigError("nodeId", f"discovered node id {node_id!r} is not 1 to {MAX_ID_CHARS} chars; set nodeId")
    completed = dataclasses.replace(
        config,
        node_id=node_id,
        runtimes=config.runtimes or detect_runtimes(find, capacity.cgroups.mode),
        system_log=config.system_log or detect_system_log(root, find),
    )
    # In another root its programs are not this machine's to run, so a configured OCI runtime
    # there is judged by the tree's cgroup layout alone (the same for `run --root` and `probe`).
    runtime_which = find if is_live(root) or not config.runtimes else (lambda name: name)
    runtimes = usable_runtimes(completed, capacity.cgroups.mode, runtime_which)
    return Node(completed, capacity, runtimes, root, merged, measured_total_ram)


def load_node_resources(node: Node) -> hw.ResourcesResult:
    """``resourcesConfigFile`` read under the node's root, its devices checked there too."""
    path = node.config.resources_config_file
    return hw.load_resources(node.root / str(path).lstrip("/"), node.root)


# ---------------------------------------------------------------------------------------------
# Planning: pure, probes + config -> SMInfo
# ---------------------------------------------------------------------------------------------


def node_capacity_report(config: AgentConfig, capacity: hw.NodeCapacity,
                         iam: Optional[MergedNode] = None) -> NodeCapacityReport:
    """max/total from IAM or the probes; allowed_* only when the operator reserved capacity,
    because an allowed_* > 0 makes CM use it as a fixed budget that ignores system load."""
    if source_of(iam, "maxDMIPS") == IAM_SOURCE:
        max_source = "IAM node info max_dmips"
    elif config.max_dmips is not None:
        max_source = "maxDMIPS (operator)"
    else:
        max_source = f"measured: {capacity.dmips_provenance}"
    ram_source = "IAM node info total_ram" if source_of(iam, "totalRAM") == IAM_SOURCE else "/proc/meminfo MemTotal"
    if config.reserve_dmips_percent > 0:
        allowed_dmips = CapacityFigure(capacity.allowed_dmips,
                                       f"systemReserve.dmipsPercent {config.reserve_dmips_percent:g} and the cgroup")
    else:
        allowed_dmips = CapacityFigure(0, "not reserved: CM uses maxDMIPS minus the load it sees")
    if config.reserve_ram_percent > 0:
        allowed_ram = CapacityFigure(capacity.allowed_ram,
                                     f"systemReserve.ramPercent {config.reserve_ram_percent:g} and the cgroup")
    else:
        allowed_ram = CapacityFigure(0, "not reserved: CM uses total RAM minus the use it sees")
    return NodeCapacityReport(
        max_dmips=CapacityFigure(capacity.max_dmips, max_source),
        allowed_dmips=allowed_dmips,
        total_ram=CapacityFigure(capacity.total_ram, ram_source),
        allowed_ram=allowed_ram,
    )


def _runtime_capacity(report: NodeCapacityReport, settings: Optional[RuntimeSettings]) -> RuntimeCapacity:
    allowed_dmips, allowed_ram = report.allowed_dmips.value, report.allowed_ram.value
    if settings is not None and settings.allowed_dmips is not None:
        allowed_dmips = min(settings.allowed_dmips, report.max_dmips.value)
    if settings is not None and settings.allowed_ram is not None:
        allowed_ram = min(settings.allowed_ram, report.total_ram.value)
    return RuntimeCapacity(report.max_dmips.value, allowed_dmips, report.total_ram.value, allowed_ram)


def _platform(config: AgentConfig, capacity: hw.NodeCapacity, cuts: List[str]) -> Platform:
    architecture = config.architecture if config.architecture is not None else capacity.architecture
    variant = config.architecture_variant if config.architecture_variant is not None else capacity.arch_variant
    if len(architecture) > MAX_ARCH_CHARS:
        cuts.append(f"architecture {architecture!r} over CM's {MAX_ARCH_CHARS} chars: not sent (set architecture)")
        architecture = ""
    if len(variant) > MAX_ARCH_CHARS:
        cuts.append(f"architecture variant {variant!r} over CM's {MAX_ARCH_CHARS} chars: not sent")
        variant = ""
    if config.os_version is not None:
        version = config.os_version
    elif len(capacity.os_version) <= MAX_OS_VERSION_CHARS:
        version = capacity.os_version
    else:
        cuts.append(f"kernel release {capacity.os_version!r} over CM's {MAX_OS_VERSION_CHARS} chars: "
                    "os version not sent (set osVersion)")
        version = ""
    features = [name for name in capacity.os_features if len(name) <= MAX_FEATURE_CHARS]
    if len(features) < len(capacity.os_features):
        cuts.append(f"OS features over CM's {MAX_FEATURE_CHARS} chars left out")
    if len(features) > MAX_FEATURES:
        cuts.append(f"OS features {', '.join(features[MAX_FEATURES:])} left out: CM takes at most {MAX_FEATURES}")
        features = features[:MAX_FEATURES]
    os_name = capacity.os_name[:MAX_OS_NAME_CHARS]
    return Platform(os_name, version, tuple(features), architecture, variant)


def _within(kind: str, names: Sequence[str], limit: int, cuts: List[str]) -> int:
    """How many of ``names`` (in order) fit CM's array; names the ones left out."""
    if len(names) <= limit:
        return len(names)
    left_out = ", ".join(repr(name) for name in names[limit:])
    cuts.append(f"{kind} {left_out} left out: CM accepts at most {limit} {kind}")
    return limit


def plan_registration(node: Node, resources: hw.ResourcesResult) -> RegistrationPlan:
    """SMInfo within CM's limits: runtimes in config order, resources in file order, each
    over-limit entry or over-long string left out and named in ``cuts``."""
    config = node.config
    cuts: List[str] = []
    report = node_capacity_report(config, node.capacity, node.iam)
    platform = _platform(config, node.capacity, cuts)
    settings: Dict[str, RuntimeSettings] = {item.type: item for item in config.runtime_settings}
    types = list(node.runtimes.types)
    runtimes = [(kind, _runtime_capacity(report, settings.get(kind)))
                for kind in types[:_within("runtimes", types, MAX_RUNTIMES, cuts)]]
    offered: List[Tuple[str, int]] = []
    for resource in resources.resources:
        if len(resource.name) > MAX_ID_CHARS:
            cuts.append(f"resource {resource.name[:MAX_ID_CHARS]}... left out: name over CM's {MAX_ID_CHARS} chars")
        else:
            offered.append((resource.name, resource.shared_count))
    offered = offered[:_within("resources", [name for name, _ in offered], MAX_RESOURCES, cuts)]
    sm_info = build_sm_info(config.node_id, runtimes, platform, offered)
    return RegistrationPlan(sm_info, tuple(cuts), report)


def iam_max_dmips_line(report: NodeCapacityReport) -> str:
    """The line for IAM's config file: CM's scale is IAM's node info ``maxDmips`` and monitoring
    reports CPU on this agent's ``maxDMIPS``, so both must be this one figure (PROTOCOL.md). The
    reference IAM reads it as ``nodeInfo.maxDMIPS`` (keys case-insensitive; aos_core_iam_cpp
    src/config/config.cpp ``ParseNodeInfoConfig``)."""
    return f'"nodeInfo": {{"maxDMIPS": {report.max_dmips.value}}}'
