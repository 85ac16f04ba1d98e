"""Honest stand-ins for subsystems this build does not have yet.

CM never meets silence: UpdateNetworks has no reply, so the agent logs it and raises a CoreAlert
so the problem is visible in the cloud.
"""

from __future__ import annotations

import logging

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .messages import core_alert
from .ports import Sender

log = logging.getLogger(__name__)


class UnsupportedNetwork:
    """UpdateNetworks has no reply: log it and tell CM through a CoreAlert."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender

    def update_networks(self, request: sm_pb2.UpdateNetworks) -> None:
        ids = ", ".join(network.network_id for network in request.networks) or "none"
        log.warning("UpdateNetworks (%s) not applied: no network manager in this build", ids)
        self._sender.send(core_alert(f"UpdateNetworks ({ids}) not applied: not supported on this node yet"))
