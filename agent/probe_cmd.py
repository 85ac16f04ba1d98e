"""`aos-sm probe [--config FILE] [--root DIR] [--json]`: what this node would register.

For board bring-up: every core with its identity, clock, DMIPS and provenance, the cgroup layout
and limits, the node's capacity with where each figure comes from, the SMInfo the agent would
send (built by agent/registration.py, as `aos-sm run` builds it) and the `maxDmips` line for IAM's
config. `--root` probes a fixture tree or a mounted image instead of `/`. With `iamPublicServerURL` in the
config it asks IAM for the node info, registers what `run` would (IAM's identity merged), and
prints IAM's figures beside the measured ones with the difference. Output goes to stdout
(it is the command's product); resource problems, CM's cuts and probe warnings go to stderr.
The network manager's prerequisites (bridge, veth, 8021q, ifb, tbf, ingress, u32, mirred,
nf_tables nat/masquerade/ct/quota/objref, dnsmasq, ip_forward) are tried in a throwaway network
namespace, as the agent does at start.
Exit 0 when the node could be probed, 2 on a bad config or a --root that is not a directory or has
no proc/meminfo (nothing there to probe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, TextIO

from google.protobuf.json_format import MessageToDict

from aos_sm.hw import CoreInfo, NodeCapacity, ResourcesResult
from aos_sm.hw.cpu import dmips_provenance
from aos_sm.hw.memory import read_meminfo

from .config import AgentConfig, ConfigFileError, load_config, parse_config
from .errors import AosError, ConfigError
from .iam.port import IamNodeInfo
from .registration import (CapacityFigure, NodeCapacityReport, RegistrationPlan, discover, iam_max_dmips_line,
                           load_node_resources, plan_registration)

EXIT_OK, EXIT_USAGE = 0, 2

# How far a measured total may be from IAM's figure before the probe says so: Dhrystone 2.1 is
# compiler-sensitive, +-15 % for cited figures (hw/dmips_table.py); an `estimate` core is a guess
# from the nearest core of its class, so twice that.
DMIPS_UNCERTAINTY = {"estimate": 0.30}
DEFAULT_DMIPS_UNCERTAINTY = 0.15


def dmips_uncertainty(provenance: str) -> float:
    return DMIPS_UNCERTAINTY.get(provenance, DEFAULT_DMIPS_UNCERTAINTY)


def compare_dmips(measured: int, iam_max_dmips: int, provenance: str) -> dict[str, Any]:
    """IAM's max DMIPS against the probe's: the difference, and whether it is more than the
    probe's uncertainty (then IAM's node config or the probe is wrong, and CM's scale with it)."""
    uncertainty = dmips_uncertainty(provenance)
    if iam_max_dmips <= 0:
        return {"iamMaxDMIPS": 0, "measuredDMIPS": measured, "verdict": "IAM states no max_dmips"}
    difference = (measured - iam_max_dmips) / iam_max_dmips
    within = abs(difference) <= uncertainty
    verdict = (f"within the probe's +-{uncertainty:.0%}" if within else
               f"differs by more than the probe's +-{uncertainty:.0%}: fix IAM's nodeInfo.maxDMIPS "
               f"(or the probe), CM schedules on IAM's figure")
    return {"iamMaxDMIPS": iam_max_dmips, "measuredDMIPS": measured, "differencePercent": round(difference * 100, 1),
            "uncertaintyPercent": round(uncertainty * 100), "withinUncertainty": within, "verdict": verdict}


def ask_iam(settings: AgentConfig, err: TextIO) -> Optional[IamNodeInfo]:
    """IAM's node info, one try: the probe reports, it does not wait."""
    if not settings.uses_iam:
        return None
    from .iam.startup import CALL_TIMEOUT, iam_client

    client = iam_client(settings)
    try:
        return client.get_node_info(CALL_TIMEOUT)
    except AosError as error:
        err.write(f"aos-sm probe: IAM at {settings.iam_public_server_url}: {error}; showing the probes only\n")
        return None
    finally:
        client.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the agent's JSON configuration (default: built-in defaults)")
    parser.add_argument("--root", type=Path, default=Path("/"), help="probe this directory as / (default /); runtimes there are judged by its cgroup layout only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def settings_from(args: argparse.Namespace) -> AgentConfig:
    """From --config when given (a ConfigError propagates to the CLI: exit 2), else the defaults
    the agent itself would run with, so the probe shows exactly what `aos-sm run` registers."""
    if args.config is None:
        return parse_config("{}")
    return load_config(args.config)


def _core_json(core: CoreInfo, usable: Sequence[int]) -> dict[str, Any]:
    identity: dict[str, Any] = {"part": f"{core.part:#05x}", "core": core.identity} if core.part is not None else {"model": core.identity}
    return {
        "index": core.index, **identity, "maxMHz": round(core.max_mhz, 3), "maxMHzSource": core.max_mhz_source,
        "capacity": core.capacity, "cluster": core.cluster, "dmipsPerMHz": core.dmips_per_mhz,
        "dmips": round(core.dmips, 1), "provenance": core.provenance, "online": core.online,
        "usable": core.index in usable,
    }


def _cgroups_json(capacity: NodeCapacity) -> dict[str, Any]:
    layout, limits = capacity.cgroups, capacity.cgroup_limits
    return {
        "mode": layout.mode,
        "v1Controllers": list(layout.v1_controllers),
        "v2Controllers": list(layout.v2_controllers),
        "limitedBy": {name: f"v{version}" for name, version in layout.limiting},
        "paths": {key or "unified": path for key, path in layout.paths},
        "cpuset": sorted(limits.cpuset) if limits.cpuset is not None else None,
        "cpuQuotaCPUs": limits.cpu_quota_cpus,
        "memoryLimit": limits.memory_limit,
    }


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.2f} GiB"


def _figure_json(figure: CapacityFigure) -> dict[str, Any]:
    return {"value": figure.value, "source": figure.source}


def _capacity_json(report: NodeCapacityReport) -> dict[str, Any]:
    return {"maxDMIPS": _figure_json(report.max_dmips), "allowedDMIPS": _figure_json(report.allowed_dmips),
            "totalRAM": _figure_json(report.total_ram), "allowedRAM": _figure_json(report.allowed_ram)}


def network_prerequisites(settings: AgentConfig, root: Path = Path("/")) -> Dict[str, Any]:
    """The network manager's prerequisites (NETWORK.md), as the agent checks them at start:
    {feature: "ok" or why missing}; empty when the network manager is disabled. They belong to
    the running kernel, so a probe of another tree (``--root``) does not claim them for it."""
    if not settings.network_enabled:
        return {}
    if root.resolve() != Path("/"):
        return {"all": f"not checked: --root {root} probes a tree, the prerequisites are the running kernel's"}
    if os.geteuid() != 0:
        return {"all": "not checked: needs root (network namespaces)"}
    from .network.namespaces import Namespaces  # noqa: PLC0415 - only the probe and the agent load it
    from .network.prerequisites import check_prerequisites  # noqa: PLC0415

    found = check_prerequisites(Namespaces())
    return {name: "ok" if ok else found.reasons.get(name, "missing") for name, ok in found.present.items()}


def _network_line(network: Dict[str, Any]) -> str:
    if not network:
        return "manager disabled (network.enabled false): instances share the agent's network"
    return "; ".join(name if why == "ok" else why if why.startswith("not checked") else f"{name} MISSING ({why})"
                     for name, why in network.items())


def _write_table(out: TextIO, capacity: NodeCapacity, settings: AgentConfig, plan: RegistrationPlan,
                 resources: ResourcesResult, network: Dict[str, Any]) -> None:
    layout, report = capacity.cgroups, plan.capacity
    limited = ", ".join(f"{name} v{version}" for name, version in layout.limiting) or "nothing"
    runtime = plan.sm_info.runtimes[0] if plan.sm_info.runtimes else None
    out.write(f"node       {settings.node_id}\n")
    out.write(f"os         {capacity.os_name} {runtime.os_info.version if runtime else capacity.os_version}   "
              f"arch {settings.architecture or capacity.architecture}"
              f"{'/' + capacity.arch_variant if capacity.arch_variant else ''} (uname {capacity.machine or '?'})\n")
    out.write(f"cgroups    {layout.mode}; limited by: {limited}; features {' '.join(capacity.os_features) or '-'}\n\n")
    header = f"{'cpu':>3}  {'core':<24} {'part':>6} {'MHz':>7} {'from':<15} {'cap':>5} {'cl':>2} {'DMIPS/MHz':>9} {'DMIPS':>8}  provenance\n"
    out.write(header)
    for core in capacity.cpus:
        flag = "" if core.index in capacity.usable_cpus else "  (not usable)"
        part = f"{core.part:#05x}" if core.part is not None else "-"
        out.write(
            f"{core.index:>3}  {core.identity[:24]:<24} {part:>6} {core.max_mhz:>7.0f} {core.max_mhz_source:<15} "
            f"{core.capacity if core.capacity is not None else '-':>5} {core.cluster:>2} {core.dmips_per_mhz:>9.3g} "
            f"{core.dmips:>8.0f}  {core.provenance}{flag}\n"
        )
    out.write(f"\nDMIPS      measured {_measured(capacity)}  max {report.max_dmips.value} ({report.max_dmips.source})  "
              f"allowed {report.allowed_dmips.value} ({report.allowed_dmips.source})\n")
    out.write(f"RAM        total {_gib(report.total_ram.value)}  allowed {_gib(report.allowed_ram.value)} "
              f"({report.allowed_ram.source})\n")
    out.write(f"runtimes   {', '.join(r.type for r in plan.sm_info.runtimes) or '-'}\n")
    names = ", ".join(f"{r.name} (shared {r.shared_count})" for r in plan.sm_info.resources)
    out.write(f"resources  {names or '-'}\n")
    out.write(f"network    {_network_line(network)}\n")
    out.write(f"\nIAM        set the same figure in IAM's node config (CM schedules on it, monitoring reports on it):\n"
              f"           {iam_max_dmips_line(report)}\n")


def _measured(capacity: NodeCapacity) -> int:
    """The probes' own total, also when the operator's maxDMIPS overrides it."""
    return round(sum(core.dmips for core in capacity.cpus if core.online))


def check_root(root: Path) -> None:
    """ConfigError unless ``root`` looks like a node's root: a directory with a proc/meminfo that
    states MemTotal. Without it every figure would be a default (0 bytes of RAM, one guessed
    core) printed as if probed, with exit 0 (issue 16)."""
    if not root.is_dir():
        raise ConfigError("--root", f"{root} is not a directory")
    if "MemTotal" not in read_meminfo(root):
        raise ConfigError("--root", f"{root} has no proc/meminfo with MemTotal: not a node's root tree "
                                    "(a mounted image needs its board's /proc files copied in)")


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    root: Path = args.root
    try:
        check_root(root)
        settings = settings_from(args)
        iam = ask_iam(settings, err)
        node = discover(settings, root, iam=iam)
    except ConfigError as error:
        if args.config is not None and error.key != "--root" and not isinstance(error, ConfigFileError):
            error = ConfigFileError.of(args.config, error)  # e.g. a node id left to discovery
        err.write(f"aos-sm probe: {error}\n")
        return EXIT_USAGE
    settings, capacity = node.config, node.capacity
    resources = load_node_resources(node)
    plan = plan_registration(node, resources)
    for warning in settings.warnings:
        err.write(f"aos-sm probe: config: {warning}\n")
    for problem in node.runtimes.problems:
        err.write(f"aos-sm probe: {problem}\n")
    for problem in resources.problems:
        err.write(f"aos-sm probe: resources: {problem}\n")
    for cut in plan.cuts:
        err.write(f"aos-sm probe: SMInfo: {cut}\n")
    for warning in capacity.warnings:
        err.write(f"aos-sm probe: warning: {warning}\n")
    if node.iam is not None:
        for warning in node.iam.warnings:
            err.write(f"aos-sm probe: IAM node info: {warning}\n")
    # The cores' own provenance: capacity.dmips_provenance says "operator" once a maxDMIPS applies.
    comparison = compare_dmips(_measured(capacity), iam.max_dmips, dmips_provenance(capacity.cpus)) \
        if iam is not None else None
    network = network_prerequisites(settings, root)
    for name, why in network.items():
        if why != "ok" and not why.startswith("not checked: --root"):
            err.write(f"aos-sm probe: network: {name} missing: {why}\n")
    if args.json:
        document = {
            "smInfo": MessageToDict(plan.sm_info),
            # Also outside SMInfo, which carries it only per registered runtime (a node may have none).
            "arch": {"architecture": settings.architecture or capacity.architecture,
                     "variant": capacity.arch_variant if settings.architecture_variant is None
                     else settings.architecture_variant,
                     "machine": capacity.machine},
            "capacity": _capacity_json(plan.capacity),
            "measuredDMIPS": _measured(capacity),
            "iamConfig": iam_max_dmips_line(plan.capacity),
            "cpus": [_core_json(core, capacity.usable_cpus) for core in capacity.cpus],
            "cgroups": _cgroups_json(capacity),
            "dmipsProvenance": capacity.dmips_provenance,
            "warnings": list(capacity.warnings),
            "resourceProblems": list(resources.problems),
            "cuts": list(plan.cuts),
            "networkPrerequisites": network,
        }
        if iam is not None and comparison is not None:
            document["iam"] = {"nodeInfo": dataclasses.asdict(iam), "dmips": comparison,
                               "measuredRAM": node.measured_total_ram}
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        _write_table(out, capacity, settings, plan, resources, network)
        if iam is not None and comparison is not None:
            _write_iam(out, iam, node.measured_total_ram, comparison)
    return EXIT_OK


def _write_iam(out: TextIO, iam: IamNodeInfo, measured_ram: int, comparison: dict[str, Any]) -> None:
    out.write(f"\nIAM node   {iam.node_id} ({iam.node_type or '-'}), {iam.os_name} {iam.os_version}, "
              f"arch {iam.architecture}{'/' + iam.architecture_variant if iam.architecture_variant else ''}\n")
    difference = f"{comparison['differencePercent']:+.1f}%" if "differencePercent" in comparison else "-"
    out.write(f"           {'':<8} {'IAM':>14} {'measured':>14} {'difference':>11}\n")
    out.write(f"           {'DMIPS':<8} {iam.max_dmips:>14} {comparison['measuredDMIPS']:>14} {difference:>11}  "
              f"{comparison['verdict']}\n")
    out.write(f"           {'RAM':<8} {_gib(iam.total_ram):>14} {_gib(measured_ram):>14}\n")
