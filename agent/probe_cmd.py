"""`aos-sm probe [--config FILE] [--root DIR] [--json]`: what this node would register.

For board bring-up: every core with its identity, clock, DMIPS and provenance, the cgroup layout
and limits, the node's capacity with where each figure comes from, the SMInfo the agent would
send (built by agent/registration.py, as `aos-sm run` builds it) and the `maxDmips` line for IAM's
config. `--root` probes a fixture tree or a mounted image instead of `/`. Output goes to stdout
(it is the command's product); resource problems, CM's cuts and probe warnings go to stderr.
The network manager's prerequisites (bridge, veth, 8021q, ifb, nf_tables nat/masquerade/ct,
dnsmasq, ip_forward) are tried in a throwaway network namespace, as the agent does at start.
Exit 0 when the node could be probed, 2 on a bad config or a --root that is not a directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Sequence, TextIO

from google.protobuf.json_format import MessageToDict

from aos_sm.hw import CoreInfo, NodeCapacity, ResourcesResult

from .config import AgentConfig, load_config, parse_config
from .errors import ConfigError
from .registration import (CapacityFigure, NodeCapacityReport, RegistrationPlan, discover, iam_max_dmips_line,
                           load_node_resources, plan_registration)

EXIT_OK, EXIT_USAGE = 0, 2


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


def network_prerequisites(settings: AgentConfig) -> Dict[str, Any]:
    """The network manager's prerequisites (NETWORK.md), as the agent checks them at start:
    {feature: "ok" or why missing}; empty when the network manager is disabled."""
    if not settings.network_enabled:
        return {}
    if os.geteuid() != 0:
        return {"all": "not checked: needs root (network namespaces)"}
    from .network.namespaces import Namespaces  # noqa: PLC0415 - only the probe and the agent load it
    from .network.prerequisites import check_prerequisites  # noqa: PLC0415

    found = check_prerequisites(Namespaces())
    return {name: "ok" if ok else found.reasons.get(name, "missing") for name, ok in found.present.items()}


def _network_line(network: Dict[str, Any]) -> str:
    if not network:
        return "manager disabled (network.enabled false): instances share the agent's network"
    return "; ".join(name if why == "ok" else f"{name} MISSING ({why})" for name, why in network.items())


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


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    root: Path = args.root
    try:
        settings = settings_from(args)
        node = discover(settings, root)
    except ConfigError as error:
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
    network = network_prerequisites(settings)
    for name, why in network.items():
        if why != "ok":
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
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        _write_table(out, capacity, settings, plan, resources, network)
    return EXIT_OK
