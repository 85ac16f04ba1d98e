"""The alert hysteresis as tables: values at times in, the exact raise/continue/fall sequence out."""

from __future__ import annotations

import datetime
from typing import List, Optional, Sequence, Tuple

import pytest
from google.protobuf.duration_pb2 import Duration

from aos_sm.agent.monitoring.alerts import (
    CONTINUE, FALL, RAISE, AlertProcessor, Limits, Rule, monitoring_parameters_rules, node_config_rules, rebuild,
)
from aos_sm.agent.monitoring.monitor import ProblemLimiter
from aos_sm.agent.nodeconfig import AlertRules, PartitionRule, PercentRule, PointsRule
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

N = None


def run(rule: Rule, samples: Sequence[Tuple[float, int]]) -> List[Optional[str]]:
    processor = AlertProcessor(rule)
    return [processor.feed(value, now) for now, value in samples]


def every_second(values: Sequence[int]) -> List[Tuple[float, int]]:
    return [(float(t), v) for t, v in enumerate(values)]


CASES = {
    # T = 0: raise on the first sample at max; continue on every sample ≥ min; the first sample
    # below min only starts the clock, so fall needs a second one.
    "T=0": (Rule("ram", 0, 50, 80),
            [10, 80, 90, 60, 40, 30, 85],
            [N, RAISE, CONTINUE, CONTINUE, N, FALL, RAISE]),
    # T = 3 s at one sample a second: raise after 3 s at max, continue every 3 s, fall after 3 s below.
    "T>0": (Rule("ram", 3, 50, 80),
            [85, 85, 85, 85, 85, 85, 85, 40, 40, 40, 40],
            [N, N, N, RAISE, N, N, CONTINUE, N, N, N, FALL]),
    # Dipping under max restarts the wait: only an unbroken T at max raises.
    "flapping around max": (Rule("cpu", 2, 50, 80),
                            [85, 70, 85, 70, 85, 85, 85],
                            [N, N, N, N, N, N, RAISE]),
    # Raised, dipping under min and back restarts the fall wait; continue still comes every T.
    "flapping around min": (Rule("cpu", 2, 50, 80),
                            [85, 85, 85, 40, 60, 40, 60, 40, 40, 40],
                            [N, N, RAISE, N, CONTINUE, N, CONTINUE, N, N, FALL]),
    # Between min and max nothing is raised; the value must reach max itself (≥, not >).
    "between thresholds": (Rule("download", 0, 50, 80),
                           [60, 79, 50, 80],
                           [N, N, N, RAISE]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hysteresis_table(name: str) -> None:
    rule, values, expected = CASES[name]
    assert run(rule, every_second(values)) == expected


def test_uneven_sampling_counts_time_not_samples() -> None:
    rule = Rule("ram", 5, 50, 80)
    samples = [(0.0, 90), (4.9, 90), (5.0, 90), (9.0, 10), (13.9, 10), (14.0, 10)]
    assert run(rule, samples) == [N, N, RAISE, N, N, FALL]


def test_retuned_rule_keeps_a_raised_alert_and_falls_by_the_new_thresholds() -> None:
    processor = AlertProcessor(Rule("ram", 0, 10, 20))
    assert processor.feed(50, 0.0) == RAISE
    kept, dropped = rebuild([processor], [Rule("ram", 0, 60, 90)])
    assert kept == [processor] and dropped == [] and processor.raised
    assert [processor.feed(50, t) for t in (1.0, 2.0)] == [N, FALL]


def test_rebuild_returns_raised_processors_whose_rule_is_gone() -> None:
    raised, idle = AlertProcessor(Rule("ram", 0, 10, 20)), AlertProcessor(Rule("cpu", 0, 10, 20))
    raised.feed(50, 0.0)
    kept, dropped = rebuild([raised, idle], [Rule("upload", 0, 1, 2)])
    assert [p.rule.parameter for p in kept] == ["upload"] and dropped == [raised]


def test_node_config_percents_become_dmips_bytes_and_partition_bytes() -> None:
    second = datetime.timedelta(seconds=1)
    rules, problems = node_config_rules(AlertRules(
        ram=PercentRule(second * 2, 50.0, 75.0),
        cpu=PercentRule(second * 0, 10.0, 90.0),
        partitions=(PartitionRule("workingDir", second, 20.0, 40.0), PartitionRule("nowhere", second, 1.0, 2.0)),
        download=PointsRule(second * 3, 1000, 2000),
    ), Limits(max_dmips=10000, total_ram=8 << 30, partition_sizes={"workingDir": 1000}))
    assert rules == [
        Rule("cpu", 0.0, 1000, 9000),
        Rule("ram", 2.0, 4 << 30, 6 << 30),
        Rule("workingDir", 1.0, 200, 400),
        Rule("download", 3.0, 1000, 2000),
    ]
    assert len(problems) == 1 and "nowhere" in problems[0] and "workingDir" in problems[0]


def test_instance_rules_come_from_the_wire_message() -> None:
    wire = sm_pb2.MonitoringParameters(alert_rules=sm_pb2.AlertRules(
        cpu=sm_pb2.AlertRulePercents(duration=Duration(seconds=4), min_threshold=25.0, max_threshold=50.0),
        partitions=[sm_pb2.PartitionAlertRule(name="state", min_threshold=10.0, max_threshold=20.0)],
        upload=sm_pb2.AlertRulePoints(min_threshold=5, max_threshold=7),
    ))
    rules, problems = monitoring_parameters_rules(wire, Limits(2000, 1 << 30, {"state": 500}))
    assert rules == [Rule("cpu", 4.0, 500, 1000), Rule("state", 0.0, 50, 100), Rule("upload", 0.0, 5, 7)]
    assert problems == []
    assert monitoring_parameters_rules(sm_pb2.MonitoringParameters(), Limits(1, 1, {})) == ([], [])


def test_a_problem_is_reported_once_per_interval() -> None:
    limiter = ProblemLimiter(interval=60.0)
    assert [limiter.should_report("a", t) for t in (0.0, 1.0, 59.0, 60.0, 61.0)] == [True, False, False, True, False]
    assert limiter.should_report("b", 1.0)
