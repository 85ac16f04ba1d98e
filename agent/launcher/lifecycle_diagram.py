"""Draw the instance life cycle from ``lifecycle.EDGES``, the same table the core runs (with the
session diagram's renderers)."""

from __future__ import annotations

from typing import List, Sequence

from aos_sm.statemachine.diagram import Arrow, dot, merge_arrows, mermaid

from .lifecycle import EDGES, Edge, Phase

_GUARD_LABELS = {"": "", "burst_left": " (burst left)", "burst_exhausted": " (burst exhausted)"}


def _arrows(edges: Sequence[Edge]) -> List[Arrow]:
    """Each edge labelled with its event and guard."""
    return merge_arrows((edge.sources, edge.dest, edge.event + _GUARD_LABELS.get(edge.guard, f" ({edge.guard})"))
                        for edge in edges)


def render_mermaid(edges: Sequence[Edge] = EDGES) -> str:
    return mermaid(Phase.Idle.name, _arrows(edges))


def render_dot(edges: Sequence[Edge] = EDGES) -> str:
    return dot("instance", Phase.Idle.name, _arrows(edges))
