"""`aos-sm probe [--config FILE] [--root DIR] [--json]`: what this node would register.

For board bring-up: every core with its identity, clock, DMIPS and provenance, the cgroup layout
and limits, and the SMInfo the agent would send. `--root` probes a fixture tree or a mounted
image instead of `/`. Output goes to stdout (it is the command's product); resource problems and
probe warnings go to stderr. Exit 0 when the node could be probed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from google.protobuf.json_format import MessageToDict

from aos_sm.hw import CoreInfo, NodeCapacity, ResourcesResult, load_resources

from .capacity import probe_capacity, usable_runtimes
from .config import AgentConfig, load_config, parse_config
from .sminfo import build_sm_info

EXIT_OK, EXIT_USAGE = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the agent's JSON configuration (default: built-in defaults)")
    parser.add_argument("--root", type=Path, default=Path("/"), help="probe this directory as / (default /); runtimes there are judged by its cgroup layout only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def settings_from(args: argparse.Namespace) -> AgentConfig:
    """From --config when given (a ConfigError propagates to the CLI: exit 2), else the defaults
    the agent itself would run with, so the probe shows exactly what `aos-sm run` registers."""
    root: Path = args.root
    if args.config is None:
        return parse_config("{}", root=root)
    return load_config(args.config, root=root)


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


def _write_table(out: TextIO, capacity: NodeCapacity, settings: AgentConfig, runtimes: Sequence[str],
                 resources: ResourcesResult) -> None:
    layout = capacity.cgroups
    limited = ", ".join(f"{name} v{version}" for name, version in layout.limiting) or "nothing"
    out.write(f"node       {settings.node_id}\n")
    out.write(f"os         {capacity.os_name} {capacity.os_version}   arch {capacity.architecture}"
              f"{' (' + capacity.arch_variant + ')' if capacity.arch_variant else ''}\n")
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
    out.write(f"\nDMIPS      max {capacity.max_dmips}  allowed {capacity.allowed_dmips}  ({capacity.dmips_provenance})\n")
    out.write(f"RAM        total {_gib(capacity.total_ram)}  allowed {_gib(capacity.allowed_ram)}\n")
    out.write(f"runtimes   {', '.join(runtimes) or '-'}\n")
    names = ", ".join(f"{r.name} (shared {r.shared_count})" for r in resources.resources)
    out.write(f"resources  {names or '-'}\n")


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    settings = settings_from(args)
    root: Path = args.root
    try:
        capacity = probe_capacity(settings, root)
    except ValueError as error:
        err.write(f"aos-sm probe: {error}\n")
        return EXIT_USAGE
    resources = load_resources(root / str(settings.resources_config_file).lstrip("/"), root)
    # A fixture tree or a mounted image: its programs are not on this host's PATH, so there its
    # configured OCI runtimes are judged by the tree's cgroup layout alone.
    which = shutil.which if root == Path("/") else (lambda name: name)
    runtimes = usable_runtimes(settings, capacity.cgroups.mode, which)
    sm_info = build_sm_info(settings.node_id, runtimes.types, capacity, resources)
    for problem in runtimes.problems:
        err.write(f"aos-sm probe: {problem}\n")
    for problem in resources.problems:
        err.write(f"aos-sm probe: resources: {problem}\n")
    for warning in capacity.warnings:
        err.write(f"aos-sm probe: warning: {warning}\n")
    if args.json:
        document = {
            "smInfo": MessageToDict(sm_info),
            # Also outside SMInfo, which carries it only per registered runtime (a node may have none).
            "arch": {"architecture": capacity.architecture, "variant": capacity.arch_variant},
            "cpus": [_core_json(core, capacity.usable_cpus) for core in capacity.cpus],
            "cgroups": _cgroups_json(capacity),
            "dmipsProvenance": capacity.dmips_provenance,
            "warnings": list(capacity.warnings),
            "resourceProblems": list(resources.problems),
        }
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        _write_table(out, capacity, settings, runtimes.types, resources)
    return EXIT_OK
