"""Honest stand-ins for subsystems this build does not have yet.

CM never meets silence: where the protocol has a reply, the reply carries ``notSupported`` (12);
where it has none, the agent logs and raises a CoreAlert so the problem is visible in the cloud.
"""

from __future__ import annotations

import logging
import threading
from typing import Dict, Tuple

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .errors import NotSupported
from .messages import core_alert, failed_instance_status
from .ports import Sender

log = logging.getLogger(__name__)

_Key = Tuple[str, str, int, int]


def _key(ident: common_pb2.InstanceIdent) -> _Key:
    return (ident.item_id, ident.subject_id, ident.instance, ident.type)


class UnsupportedLauncher:
    """Every start is ``failed`` with notSupported; CM still gets the batch's NodeInstancesStatus.

    Failed instances stay listed (as the reference launcher lists instances that failed to start)
    until CM stops them, so registration reports the same truth as the last batch.
    """

    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        self._lock = threading.Lock()
        self._instances: Dict[_Key, sm_pb2.InstanceStatus] = {}

    def update_instances(self, request: sm_pb2.UpdateInstances) -> None:
        error = NotSupported("this node cannot run instances yet: no launcher in this build")
        with self._lock:
            for ident in request.stop_instances:
                self._instances.pop(_key(ident), None)
            statuses = []
            for info in request.start_instances:
                status = failed_instance_status(info, error.to_error_info())
                self._instances[_key(info.instance)] = status
                statuses.append(status)
        if statuses:
            self._sender.send(
                sm_pb2.SMOutgoingMessages(
                    update_instances_status=sm_pb2.UpdateInstancesStatus(instances=statuses)
                )
            )
        self._sender.send(sm_pb2.SMOutgoingMessages(node_instances_status=self.node_instances_status()))

    def node_instances_status(self) -> sm_pb2.NodeInstancesStatus:
        with self._lock:
            return sm_pb2.NodeInstancesStatus(instances=list(self._instances.values()))


class UnsupportedNetwork:
    """UpdateNetworks has no reply: log it and tell CM through a CoreAlert."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender

    def update_networks(self, request: sm_pb2.UpdateNetworks) -> None:
        ids = ", ".join(network.network_id for network in request.networks) or "none"
        log.warning("UpdateNetworks (%s) not applied: no network manager in this build", ids)
        self._sender.send(core_alert(f"UpdateNetworks ({ids}) not applied: not supported on this node yet"))
