"""Quota alert rules and their hysteresis (pure: values and times in, statuses out).

Theory of operation
-------------------
Each rule watches one parameter (``cpu``, ``ram``, ``download``, ``upload`` or a partition's
name) with thresholds already in the units monitoring reports (DMIPS, bytes). PROTOCOL.md,
"Alert rules and hysteresis", with T = the rule's ``minTimeout`` (``duration`` on the wire):

- not raised: ``raise`` once the value has stayed ≥ max for T (at once when T = 0); a sample
  below max restarts the wait;
- raised: while the value is ≥ min, ``continue`` every T (every sample when T = 0); once it drops
  below min, ``fall`` when it has stayed below min for T, which takes at least two samples even
  when T = 0 (the first sample below min only starts the clock).

This is the reference's ``AlertProcessor`` (aos_core_lib_cpp, monitoring/alertprocessor.cpp)
restated as a table of cases, with the clock injected so tests drive it sample by sample.
Thresholds given in percent are converted here: cpu against the node's max DMIPS, ram against
its total RAM, a partition against that partition's size; download/upload are absolute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..nodeconfig import AlertRules

RAISE = "raise"
CONTINUE = "continue"
FALL = "fall"


@dataclass(frozen=True)
class Rule:
    """One parameter's thresholds in reported units; ``min_timeout`` in seconds."""

    parameter: str
    min_timeout: float
    min_threshold: int
    max_threshold: int
    # How often a raised alert says ``continue``; None: every ``min_timeout`` (the wire's rules).
    # The agent's own limit rules raise at once but repeat rarely.
    repeat: Optional[float] = None


class AlertProcessor:
    """The hysteresis of one rule. ``feed`` returns the status to send for this sample, if any."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.raised = False
        self._above_max_since: Optional[float] = None  # also: time of the last raise/continue
        self._below_min_since: Optional[float] = None

    def retune(self, rule: Rule) -> None:
        """New thresholds for the same parameter (a new node config): a raised alert stays raised,
        so it falls by the new rule instead of being forgotten."""
        self.rule = rule

    def feed(self, value: int, now: float) -> Optional[str]:
        if not self.raised:
            return self._watch_max(value, now)
        return self._watch_min(value, now)

    def _watch_max(self, value: int, now: float) -> Optional[str]:
        rule = self.rule
        if value < rule.max_threshold:
            self._above_max_since = None
            return None
        if self._above_max_since is None:
            self._above_max_since = now
        if now - self._above_max_since >= rule.min_timeout:
            self.raised = True
            self._above_max_since = now
            self._below_min_since = None
            return RAISE
        return None

    def _watch_min(self, value: int, now: float) -> Optional[str]:
        rule = self.rule
        if value >= rule.min_threshold:
            self._below_min_since = None
            assert self._above_max_since is not None
            repeat = rule.min_timeout if rule.repeat is None else rule.repeat
            if now - self._above_max_since >= repeat:
                self._above_max_since = now
                return CONTINUE
            return None
        if self._below_min_since is None:
            self._below_min_since = now
            return None
        if now - self._below_min_since >= rule.min_timeout:
            self.raised = False
            self._below_min_since = None
            self._above_max_since = None
            return FALL
        return None


# --------------------------------------------------------------------------------------------
# Rules from the node config and from an instance's monitoring parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What percent thresholds are percents of."""

    max_dmips: int
    total_ram: int
    partition_sizes: Mapping[str, int]


def _percent(value: float, whole: int) -> int:
    return int(round(value * whole / 100.0))


def node_config_rules(alert_rules: Optional[AlertRules], limits: Limits) -> Tuple[List[Rule], List[str]]:
    """System rules from the node config's ``alertRules``; also the problems (unknown partitions)."""
    rules: List[Rule] = []
    problems: List[str] = []
    if alert_rules is None:
        return rules, problems
    for name, percent_rule, whole in (("cpu", alert_rules.cpu, limits.max_dmips),
                                      ("ram", alert_rules.ram, limits.total_ram)):
        if percent_rule is not None:
            rules.append(Rule(name, percent_rule.min_timeout.total_seconds(),
                              _percent(percent_rule.min_threshold, whole),
                              _percent(percent_rule.max_threshold, whole)))
    for partition in alert_rules.partitions:
        size = limits.partition_sizes.get(partition.name)
        if size is None:
            problems.append(f"alert rule for partition {partition.name!r}: no such partition is monitored "
                            f"(monitoring.partitions has {', '.join(sorted(limits.partition_sizes)) or 'none'})")
            continue
        rules.append(Rule(partition.name, partition.min_timeout.total_seconds(),
                          _percent(partition.min_threshold, size), _percent(partition.max_threshold, size)))
    for name, points in (("download", alert_rules.download), ("upload", alert_rules.upload)):
        if points is not None:
            rules.append(Rule(name, points.min_timeout.total_seconds(), points.min_threshold, points.max_threshold))
    return rules, problems


def monitoring_parameters_rules(
    parameters: sm_pb2.MonitoringParameters, limits: Limits
) -> Tuple[List[Rule], List[str]]:
    """Instance rules from ``InstanceInfo.monitoring_parameters.alert_rules`` (a rule is present
    when its message is set on the wire)."""
    rules: List[Rule] = []
    problems: List[str] = []
    if not parameters.HasField("alert_rules"):
        return rules, problems
    wire = parameters.alert_rules
    for name, whole in (("cpu", limits.max_dmips), ("ram", limits.total_ram)):
        if wire.HasField(name):
            percents = getattr(wire, name)
            rules.append(Rule(name, percents.duration.ToTimedelta().total_seconds(),
                              _percent(percents.min_threshold, whole), _percent(percents.max_threshold, whole)))
    for partition in wire.partitions:
        size = limits.partition_sizes.get(partition.name)
        if size is None:
            problems.append(f"alert rule for partition {partition.name!r}: the instance has no such partition")
            continue
        rules.append(Rule(partition.name, partition.duration.ToTimedelta().total_seconds(),
                          _percent(partition.min_threshold, size), _percent(partition.max_threshold, size)))
    for name in ("download", "upload"):
        if wire.HasField(name):
            points = getattr(wire, name)
            rules.append(Rule(name, points.duration.ToTimedelta().total_seconds(),
                              int(points.min_threshold), int(points.max_threshold)))
    return rules, problems


def rebuild(processors: List[AlertProcessor], rules: List[Rule]) -> Tuple[List[AlertProcessor], List[AlertProcessor]]:
    """Processors for ``rules``, reusing (retuned) the old one of each parameter; also the old
    processors whose rule is gone while raised, which owe CM a ``fall``."""
    old = {processor.rule.parameter: processor for processor in processors}
    kept: List[AlertProcessor] = []
    for rule in rules:
        processor = old.pop(rule.parameter, None)
        if processor is None:
            processor = AlertProcessor(rule)
        else:
            processor.retune(rule)
        kept.append(processor)
    return kept, [processor for processor in old.values() if processor.raised]


def feed_all(processors: List[AlertProcessor], values: Dict[str, int], now: float) -> List[Tuple[str, int, str]]:
    """Feed every processor whose parameter has a value; ``(parameter, value, status)`` to send."""
    statuses: List[Tuple[str, int, str]] = []
    for processor in processors:
        value = values.get(processor.rule.parameter)
        if value is None:
            continue
        status = processor.feed(value, now)
        if status is not None:
            statuses.append((processor.rule.parameter, value, status))
    return statuses
