"""IAM's node info merged with our config: a pure function (IAM.md "What we decide").

With IAM, it is the source of the node id, max DMIPS, RAM, OS and architecture: CM schedules on
IAM's figures, so SMInfo and monitoring must use the same ones. A value the operator sets in our
config still wins (a board whose IAM config is wrong can be corrected here), with a warning that
names both values, since the two then disagree on what CM sees elsewhere. What IAM leaves unset
(0 or "") falls back to the config, then to our probes, as without IAM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..config import MAX_ARCH_CHARS, MAX_ID_CHARS, MAX_OS_VERSION_CHARS, AgentConfig
from .port import IamNodeInfo

IAM_SOURCE = "IAM node info"


@dataclass(frozen=True)
class MergedNode:
    """The config with IAM's identity filled in, and what the config cannot carry."""

    config: AgentConfig
    total_ram: Optional[int]  # IAM's total_ram, replacing the probe's; None: probe
    os_name: Optional[str]  # IAM's os_info.os; None: probe
    sources: Tuple[Tuple[str, str], ...]  # (config key, IAM_SOURCE or "config (operator)")
    warnings: Tuple[str, ...]


# (config key, AgentConfig attribute, IamNodeInfo attribute, CM's limit in chars or None)
_FIELDS = (
    ("nodeId", "node_id", "node_id", MAX_ID_CHARS),
    ("maxDMIPS", "max_dmips", "max_dmips", None),
    ("architecture", "architecture", "architecture", MAX_ARCH_CHARS),
    ("architectureVariant", "architecture_variant", "architecture_variant", MAX_ARCH_CHARS),
    ("osVersion", "os_version", "os_version", MAX_OS_VERSION_CHARS),
)


def _unset(value: Any) -> bool:
    return value is None or value == "" or value == 0


def merge_node_info(config: AgentConfig, iam: IamNodeInfo) -> MergedNode:
    """``config`` (as parsed: operator's values only) completed from ``iam``."""
    changes: Dict[str, Any] = {}
    sources: List[Tuple[str, str]] = []
    warnings: List[str] = []
    for key, attribute, iam_attribute, limit in _FIELDS:
        ours, theirs = getattr(config, attribute), getattr(iam, iam_attribute)
        # "" is a real architectureVariant (amd64 has none); elsewhere "" means not configured.
        operator_set = ours is not None if attribute == "architecture_variant" else not _unset(ours)
        if operator_set:
            sources.append((key, "config (operator)"))
            if not _unset(theirs) and ours != theirs:
                warnings.append(f"{key} {ours!r} from the config overrides IAM's {theirs!r}")
            continue
        if _unset(theirs):
            continue
        if limit is not None and len(str(theirs)) > limit:
            warnings.append(f"IAM's {key} {str(theirs)[:limit]}... is over CM's {limit} chars: not used")
            continue
        changes[attribute] = theirs
        sources.append((key, IAM_SOURCE))
    total_ram = iam.total_ram if iam.total_ram > 0 else None
    if total_ram is not None:
        sources.append(("totalRAM", IAM_SOURCE))
    os_name = iam.os_name or None
    return MergedNode(dataclasses.replace(config, **changes), total_ram, os_name, tuple(sources), tuple(warnings))


def source_of(merged: Optional[MergedNode], key: str) -> Optional[str]:
    if merged is None:
        return None
    return dict(merged.sources).get(key)
