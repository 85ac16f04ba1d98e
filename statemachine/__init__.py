"""The pure session core of aos-sm: states, the transition table, events in, effects out.

Nothing in this package may import grpc, os, time, threading, asyncio, subprocess, psutil or
pyroute2 (tests/statemachine/test_purity.py enforces it).
"""

from .backoff import backoff_delays
from .core import InvalidTransition, SessionCore, SessionError
from .diagram import render_dot, render_mermaid
from .ratelimit import RateLimiter
from .status import STATUS_CODES, Pace, Problem, Recovery, recovery_for, should_recover
from .table import EDGES, Edge, State

__all__ = [
    "EDGES",
    "Edge",
    "InvalidTransition",
    "Pace",
    "Problem",
    "RateLimiter",
    "Recovery",
    "STATUS_CODES",
    "SessionCore",
    "SessionError",
    "State",
    "backoff_delays",
    "render_dot",
    "recovery_for",
    "render_mermaid",
    "should_recover",
]
