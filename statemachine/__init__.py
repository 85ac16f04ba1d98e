"""The pure session core of aos-sm: states, the transition table, events in, effects out.

Nothing in this package may import grpc, os, time, threading, asyncio, subprocess, psutil or
pyroute2 (tests/statemachine/test_purity.py enforces it).
"""

from .backoff import backoff_delays
from .core import InvalidTransition, SessionCore, SessionError
from .diagram import render_dot, render_mermaid
from .table import EDGES, Edge, State

__all__ = [
    "EDGES",
    "Edge",
    "InvalidTransition",
    "SessionCore",
    "SessionError",
    "State",
    "backoff_delays",
    "render_dot",
    "render_mermaid",
]
