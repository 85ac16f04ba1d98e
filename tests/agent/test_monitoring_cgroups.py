"""Per-instance cpu and ram of a busy process in a real cgroup, on the wire."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import pytest

from agent_helpers import registered
from cgroup_helpers import BUSY, InstanceCgroup, cgroup_dirs_or_skip_reason, remove_parent
from contract_cm import ContractCM

from aos_sm.agent.app import Agent
from aos_sm.agent.ports import InstanceKey, MonitoredInstance
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

MIB = 64


@pytest.mark.system
def test_a_busy_instance_in_its_cgroup_shows_cpu_and_ram(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    hierarchies, reason = cgroup_dirs_or_skip_reason()
    if reason:
        pytest.skip(f"no real cgroups for this test because {reason}")
    parent = f"aos-sm-test-{os.getpid()}"
    cgroup = InstanceCgroup(hierarchies, parent, "busy")
    try:
        cgroup.run(BUSY.format(mib=MIB))
        agent = start_agent(contract_cm.address, monitoring={"pollPeriod": "300ms", "averageWindow": "3s"})
        session = registered(contract_cm)
        key = InstanceKey("service1", "subject1", 0)
        agent.monitor.register_instance(MonitoredInstance(
            key=key, runtime_id="runc-id", cgroup=cgroup.relative,
            # ram rule: raise at 0.02 % of the node's RAM, far below the 64 MiB the process holds.
            monitoring_parameters=sm_pb2.MonitoringParameters(alert_rules=sm_pb2.AlertRules(
                ram=sm_pb2.AlertRulePercents(min_threshold=0.01, max_threshold=0.02))),
        ))

        def busy_seen(message: Any) -> bool:
            return any(i.monitoring_data.cpu > 0 and i.monitoring_data.ram >= MIB << 20
                       for i in message.instances_monitoring)

        sample = session.wait_for("instant_monitoring", timeout=15, predicate=busy_seen)
        (instance,) = sample.instances_monitoring
        assert (instance.instance.item_id, instance.instance.subject_id, instance.runtime_id) == (
            "service1", "subject1", "runc-id")
        # One spinning thread is at most one core's share of the node's DMIPS (10 % for the jitter
        # between reading the cgroup's counter and the clock).
        cores = len(agent.capacity.cpus)
        assert instance.monitoring_data.cpu <= 1.1 * agent.capacity.max_dmips / cores

        alert = session.wait_for("alert", timeout=15, predicate=lambda a: a.HasField("instance_quota_alert"))
        quota = alert.instance_quota_alert
        assert (quota.instance.item_id, quota.instance.instance, quota.parameter, quota.status) == (
            "service1", 0, "ram", "raise")
        assert quota.value >= MIB << 20

        session.send("get_average_monitoring", {})
        average = session.wait_for("average_monitoring", timeout=1.0)
        (averaged,) = average.instances_monitoring
        assert averaged.runtime_id == "runc-id" and averaged.monitoring_data.timestamp.seconds > 0
        assert averaged.monitoring_data.cpu > 0 and averaged.monitoring_data.ram >= MIB << 20

        agent.monitor.unregister_instance(key)
        unregistered_at = time.time()
        later = session.wait_for("instant_monitoring", timeout=15, predicate=lambda m: (
            m.node_monitoring.timestamp.ToNanoseconds() / 1e9 > unregistered_at))
        assert not later.instances_monitoring
    finally:
        cgroup.remove()
        remove_parent(hierarchies, parent)
    assert not any(d.exists() for d in cgroup.dirs)
