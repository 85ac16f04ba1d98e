"""Draw a state diagram from the table its core runs: the session's ``table.EDGES`` here, and
the instance life cycle's (agent/launcher/lifecycle_diagram.py) with the same two renderers."""

from __future__ import annotations

from enum import Enum
from typing import Dict, Iterable, List, Sequence, Tuple

from .table import EDGES, Edge, State

# (source name, destination name, label): one arrow of a drawn diagram.
Arrow = Tuple[str, str, str]


def merge_arrows(labelled: Iterable[Tuple[Iterable[Enum], Enum, str]]) -> List[Arrow]:
    """One arrow per (source, dest) pair, labelled with every label that takes it, in table order."""
    labels: Dict[Tuple[str, str], List[str]] = {}
    for sources, dest, label in labelled:
        for source in sources:
            events = labels.setdefault((source.name, dest.name), [])
            if label not in events:
                events.append(label)
    return [(source, dest, " / ".join(events)) for (source, dest), events in labels.items()]


def mermaid(initial: str, arrows: Sequence[Arrow]) -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {initial}"]
    lines += [f"    {src} --> {dst}: {label}" for src, dst, label in arrows]
    return "\n".join(lines) + "\n"


def dot(graph: str, initial: str, arrows: Sequence[Arrow]) -> str:
    lines = [
        f"digraph {graph} {{",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded];',
        '    start [shape=point];',
        f"    start -> {initial};",
    ]
    lines += [f'    {src} -> {dst} [label="{label}"];' for src, dst, label in arrows]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _session_arrows(edges: Sequence[Edge]) -> List[Arrow]:
    return merge_arrows((edge.sources, edge.dest, edge.event.__name__) for edge in edges)


def render_mermaid(edges: Sequence[Edge] = EDGES) -> str:
    return mermaid(State.Disconnected.name, _session_arrows(edges))


def render_dot(edges: Sequence[Edge] = EDGES) -> str:
    return dot("session", State.Disconnected.name, _session_arrows(edges))
