"""Draw the instance life cycle from ``lifecycle.EDGES``, the same table the core runs."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .lifecycle import EDGES, Edge, Phase

_GUARD_LABELS = {"": "", "burst_left": " (burst left)", "burst_exhausted": " (burst exhausted)"}


def _merged(edges: Sequence[Edge]) -> List[Tuple[Phase, Phase, str]]:
    """One arrow per (source, dest) pair, labelled with every event (and guard) that takes it."""
    labels: Dict[Tuple[Phase, Phase], List[str]] = {}
    for edge in edges:
        label = edge.event + _GUARD_LABELS.get(edge.guard, f" ({edge.guard})")
        for source in edge.sources:
            events = labels.setdefault((source, edge.dest), [])
            if label not in events:
                events.append(label)
    return [(source, dest, " / ".join(events)) for (source, dest), events in labels.items()]


def render_mermaid(edges: Sequence[Edge] = EDGES) -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.Idle.name}"]
    lines += [f"    {src.name} --> {dst.name}: {label}" for src, dst, label in _merged(edges)]
    return "\n".join(lines) + "\n"


def render_dot(edges: Sequence[Edge] = EDGES) -> str:
    lines = [
        "digraph instance {",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded];',
        '    start [shape=point];',
        f"    start -> {Phase.Idle.name};",
    ]
    lines += [f'    {src.name} -> {dst.name} [label="{label}"];' for src, dst, label in _merged(edges)]
    lines.append("}")
    return "\n".join(lines) + "\n"
