"""Monitoring and quota alerts: node and instance usage, moving averages, hysteresis rules."""

from __future__ import annotations

from .monitor import Monitor, TrafficPort

__all__ = ["Monitor", "TrafficPort"]
