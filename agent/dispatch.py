"""Route each CM message to its subsystem through one dict, and make sure a reply goes out.

Every request that has a reply in PROTOCOL.md gets exactly one, with ``error`` filled in, even
when its handler raises: the reference only logs handler errors and leaves CM waiting. A handler
that raises is also a fault of the agent itself, which CM hears of as a CoreAlert.
A oneof kind this agent does not know (a newer CM) is logged and ignored; the stream stays up.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict

from google.protobuf.message import Message

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .cloud import CloudConnection
from .errors import error_info_from_exception
from .messages import core_alert, failed_instance_status, log_error, now_timestamp
from .ports import LauncherPort, LogsPort, MonitoringPort, NetworkPort, NodeConfigPort, Sender
from .wirecheck import check_update_instances

log = logging.getLogger(__name__)

Out = sm_pb2.SMOutgoingMessages


class Dispatcher:
    def __init__(
        self,
        *,
        sender: Sender,
        node_config: NodeConfigPort,
        launcher: LauncherPort,
        logs: LogsPort,
        monitoring: MonitoringPort,
        network: NetworkPort,
        cloud: CloudConnection,
    ) -> None:
        self._sender = sender
        self._node_config = node_config
        self._launcher = launcher
        self._logs = logs
        self._monitoring = monitoring
        self._network = network
        self._cloud = cloud
        self._routes: Dict[str, Callable[[Message], None]] = {
            "get_node_config_status": self._get_node_config_status,
            "check_node_config": self._check_node_config,
            "set_node_config": self._set_node_config,
            "update_instances": self._update_instances,
            "system_log_request": self._system_log,
            "instance_log_request": self._instance_log,
            "instance_crash_log_request": self._crash_log,
            "get_average_monitoring": self._average_monitoring,
            "connection_status": self._connection_status,
            "update_networks": self._update_networks,
        }

    def handle(self, message: sm_pb2.SMIncomingMessages) -> None:
        kind = message.WhichOneof("SMIncomingMessage")
        if kind is None:
            log.warning("CM sent a message this agent does not know (a newer CM?); ignored")
            return
        route = self._routes.get(kind)
        if route is None:
            log.error("no route for CM message %s", kind)
            return
        route(getattr(message, kind))

    # Node config: always one NodeConfigStatus.

    def _node_config_reply(self, make: Callable[[], sm_pb2.NodeConfigStatus], version: str) -> None:
        try:
            status = make()
        except Exception as err:
            log.exception("node config handler failed")
            self._sender.send(core_alert(f"node config handler failed: {err}"))
            status = sm_pb2.NodeConfigStatus(
                state=self._safe_state(), version=version, error=error_info_from_exception(err)
            )
        self._sender.send(Out(node_config_status=status))

    def _safe_state(self) -> str:
        try:
            return self._node_config.status().state
        except Exception:
            return "failed"

    def _get_node_config_status(self, _request: Message) -> None:
        self._node_config_reply(self._node_config.status, "")

    def _check_node_config(self, request: Message) -> None:
        assert isinstance(request, sm_pb2.CheckNodeConfig)
        self._node_config_reply(
            lambda: self._node_config.check(request.node_config, request.version), request.version
        )

    def _set_node_config(self, request: Message) -> None:
        assert isinstance(request, sm_pb2.SetNodeConfig)
        self._node_config_reply(
            lambda: self._node_config.set(request.node_config, request.version), request.version
        )

    # Instances: a handler failure fails every start instance, then CM gets NodeInstancesStatus.

    def _update_instances(self, request: Message) -> None:
        assert isinstance(request, sm_pb2.UpdateInstances)
        # Refused entries (wirecheck: out of the wire's ranges) get their status now; the rest
        # goes on, and the launcher's batch ends with NodeInstancesStatus as always.
        checked = check_update_instances(request)
        if checked.rejected:
            log.warning("UpdateInstances: refused %s", "; ".join(s.error.message for s in checked.rejected))
            self._sender.send(Out(update_instances_status=sm_pb2.UpdateInstancesStatus(instances=checked.rejected)))
        request = checked.request
        try:
            self._launcher.update_instances(request)
        except Exception as err:
            log.exception("launcher failed on UpdateInstances")
            self._sender.send(core_alert(f"launcher failed on UpdateInstances: {err}"))
            error = error_info_from_exception(err)
            failed = [failed_instance_status(info, error) for info in request.start_instances]
            if failed:
                self._sender.send(Out(update_instances_status=sm_pb2.UpdateInstancesStatus(instances=failed)))
            self._sender.send(Out(node_instances_status=self._launcher.node_instances_status()))

    # Logs: a handler failure is one ``error`` part for that correlation id.

    def _log_request(self, handler: Callable[[], None], correlation_id: str) -> None:
        try:
            handler()
        except Exception as err:
            log.exception("log request %s failed", correlation_id)
            self._sender.send(core_alert(f"log request {correlation_id} failed: {err}"))
            self._sender.send(log_error(correlation_id, error_info_from_exception(err)))

    def _system_log(self, request: Message) -> None:
        assert isinstance(request, sm_pb2.SystemLogRequest)
        self._log_request(lambda: self._logs.system_log(request), request.correlation_id)

    def _instance_log(self, request: Message) -> None:
        assert isinstance(request, sm_pb2.InstanceLogRequest)
        self._log_request(lambda: self._logs.instance_log(request), request.correlation_id)

    def _crash_log(self, request: Message) -> None:
        assert isinstance(request, sm_pb2.InstanceCrashLogRequest)
        self._log_request(lambda: self._logs.crash_log(request), request.correlation_id)

    # Monitoring: AverageMonitoring has no error field; a failure still answers, with a CoreAlert.

    def _average_monitoring(self, _request: Message) -> None:
        try:
            average = self._monitoring.average_monitoring()
        except Exception as err:
            log.exception("average monitoring failed")
            self._sender.send(core_alert(f"average monitoring failed: {err}"))
            average = sm_pb2.AverageMonitoring(node_monitoring=sm_pb2.MonitoringData(timestamp=now_timestamp()))
        self._sender.send(Out(average_monitoring=average))

    # No replies: ConnectionStatus and UpdateNetworks.

    def _connection_status(self, request: Message) -> None:
        assert isinstance(request, sm_pb2.ConnectionStatus)
        self._cloud.update(request.cloud_status == sm_pb2.CONNECTED)

    def _update_networks(self, request: Message) -> None:
        assert isinstance(request, sm_pb2.UpdateNetworks)
        try:
            self._network.update_networks(request)
        except Exception as err:
            log.exception("UpdateNetworks failed")
            self._sender.send(core_alert(f"UpdateNetworks failed: {err}"))
