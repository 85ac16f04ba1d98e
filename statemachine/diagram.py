"""Draw the session diagram from ``table.EDGES``, the same table the core runs."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .table import EDGES, Edge, State


def _merged(edges: Sequence[Edge]) -> List[Tuple[State, State, str]]:
    """One arrow per (source, dest) pair, labelled with every event that takes it."""
    labels: Dict[Tuple[State, State], List[str]] = {}
    for edge in edges:
        for source in edge.sources:
            events = labels.setdefault((source, edge.dest), [])
            if edge.event.__name__ not in events:
                events.append(edge.event.__name__)
    return [(source, dest, " / ".join(events)) for (source, dest), events in labels.items()]


def render_mermaid(edges: Sequence[Edge] = EDGES) -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {State.Disconnected.name}"]
    lines += [f"    {src.name} --> {dst.name}: {label}" for src, dst, label in _merged(edges)]
    return "\n".join(lines) + "\n"


def render_dot(edges: Sequence[Edge] = EDGES) -> str:
    lines = [
        "digraph session {",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded];',
        '    start [shape=point];',
        f"    start -> {State.Disconnected.name};",
    ]
    lines += [f'    {src.name} -> {dst.name} [label="{label}"];' for src, dst, label in _merged(edges)]
    lines.append("}")
    return "\n".join(lines) + "\n"
