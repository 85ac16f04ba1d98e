"""While a session is live, InstantMonitoring does not pile up behind a CM that stopped reading."""

from __future__ import annotations

from aos_sm.agent.messages import core_alert
from aos_sm.agent.outbox import Outbox
from aos_sm.agent.writequeue import WriteQueue
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


def sample(ram: int) -> sm_pb2.SMOutgoingMessages:
    return sm_pb2.SMOutgoingMessages(instant_monitoring=sm_pb2.InstantMonitoring(
        node_monitoring=sm_pb2.MonitoringData(ram=ram)))


def test_samples_stop_at_the_backlog_bound_and_alerts_still_queue() -> None:
    writes: WriteQueue[sm_pb2.SMOutgoingMessages] = WriteQueue()
    outbox = Outbox(max_backlog=3)
    outbox.attach(writes.put, writes.backlog)
    for ram in range(10):  # nobody consumes the stream
        outbox.send(sample(ram))
    outbox.send(core_alert("still delivered"))
    assert writes.backlog() == 4
    writes.close()
    taken = list(writes)
    assert [m.instant_monitoring.node_monitoring.ram for m in taken[:3]] == [0, 1, 2]
    assert taken[3].alert.core_alert.message == "still delivered"
    outbox.send(sample(42))  # the stream drained: samples flow again
    assert writes.backlog() == 1
