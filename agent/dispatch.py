"""Route each CM message to its subsystem through one dict, and make sure a reply goes out.

Every request that has a reply in PROTOCOL.md gets exactly one, with ``error`` filled in, even
when its handler raises: the reference only logs handler errors and leaves CM waiting. A handler
that raises is also a fault of the agent itself, which CM hears of as a CoreAlert.
A oneof kind this agent does not know (a newer CM) is logged and ignored; the stream stays up.

Frames arrive raw (agent/transport.py) and are parsed here (agent/incoming.py). A frame that
does not decode is a CoreAlert saying what and why, at most one a minute per request kind (a
flood of garbage must not become a flood of alerts); when the outer layer still says which
request it was and that request has a reply, the reply goes out with ``invalidArgument``:
- CheckNodeConfig / SetNodeConfig: NodeConfigStatus (current state, the version if readable);
- log requests: an ``error`` LogData for the correlation id, if readable;
- UpdateInstances: each start instance that does not decode is ``failed`` (when its identity
  is readable), the ones that do decode are started as usual, and NodeInstancesStatus follows;
- GetNodeConfigStatus, GetAverageMonitoring: they carry nothing, so they are answered as usual;
- ConnectionStatus, UpdateNetworks, garbage: no reply exists; the CoreAlert is all.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict

from google.protobuf.message import Message

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2
from aos_sm.statemachine import RateLimiter

from .cloud import CloudConnection
from .errors import InvalidArgument, error_info_from_exception
from .incoming import Undecodable, WireError, parse_frame, string_field, type_name, walk_fields
from .messages import core_alert, failed_instance_status, log_error, now_timestamp
from .ports import LauncherPort, LogsPort, MonitoringPort, NetworkPort, NodeConfigPort, Sender
from .wirecheck import CheckedUpdate, check_update_instances, update_instances_from_bytes

log = logging.getLogger(__name__)

Out = sm_pb2.SMOutgoingMessages

UPDATE_INSTANCES_FIELD: int = sm_pb2.SMIncomingMessages.DESCRIPTOR.fields_by_name["update_instances"].number

# One CoreAlert per request kind per minute about frames that do not decode.
UNDECODABLE_ALERT_INTERVAL = 60.0


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._alerts = RateLimiter(UNDECODABLE_ALERT_INTERVAL)
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
        # Replies to requests whose payload does not decode (see the module docstring).
        self._undecodable_replies: Dict[str, Callable[[Undecodable], None]] = {
            "get_node_config_status": lambda _bad: self._get_node_config_status(sm_pb2.GetNodeConfigStatus()),
            "check_node_config": self._bad_node_config,
            "set_node_config": self._bad_node_config,
            "update_instances": self._bad_update_instances,
            "system_log_request": self._bad_log_request,
            "instance_log_request": self._bad_log_request,
            "instance_crash_log_request": self._bad_log_request,
            "get_average_monitoring": lambda _bad: self._average_monitoring(sm_pb2.GetAverageMonitoring()),
        }

    def handle_frame(self, frame: bytes) -> None:
        """Parse one raw frame from CM and handle it; a frame that does not decode never raises."""
        parsed = parse_frame(frame)
        if isinstance(parsed, Undecodable):
            self._undecodable(parsed)
        elif parsed.WhichOneof("SMIncomingMessage") == "update_instances":
            # protobuf silently truncates an over-wide uint32 (a uid of 2**32 decodes as 0, root):
            # instances are checked on their raw bytes, where the truncation is still visible.
            try:
                payload = _last_field(frame, UPDATE_INSTANCES_FIELD)
            except WireError:  # past the walk's bounds: the decoded message's checks still run
                self.handle(parsed)
            else:
                self._run_update(update_instances_from_bytes(payload))
        else:
            self.handle(parsed)

    def handle(self, message: sm_pb2.SMIncomingMessages) -> None:
        kind = message.WhichOneof("SMIncomingMessage")
        if kind is None:
            self._alert_limited("unknown", "CM sent a message this agent does not know (a newer CM?); ignored",
                                to_cm=False)
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
        self._run_update(check_update_instances(request))

    def _run_update(self, checked: CheckedUpdate) -> None:
        """Refused entries (wirecheck: out of the wire's ranges, or undecodable) get their status
        now; the rest goes to the launcher, whose batch ends with NodeInstancesStatus as always
        (an empty one too, so CM always hears the node's instances)."""
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

    # Frames that do not decode (see the module docstring).

    def _alert_limited(self, key: str, text: str, *, to_cm: bool = True) -> None:
        passes, held = self._alerts.allow(key, self._clock())
        if not passes:
            log.debug("%s", text)
            return
        if held:
            text = f"{text} ({held} more like it since the last report)"
        log.warning("%s", text)
        if to_cm:
            self._sender.send(core_alert(text))

    def _undecodable(self, bad: Undecodable) -> None:
        self._alert_limited(bad.kind or "garbage", f"undecodable {type_name(bad.kind)} from CM: {bad.why}")
        reply = self._undecodable_replies.get(bad.kind or "")
        if reply is not None:
            reply(bad)

    def _bad_node_config(self, bad: Undecodable) -> None:
        version = string_field(bad.payload, 2)  # CheckNodeConfig / SetNodeConfig .version
        error = InvalidArgument(f"{bad.why} ({type_name(bad.kind)} undecodable)")
        self._sender.send(Out(node_config_status=sm_pb2.NodeConfigStatus(
            state=self._safe_state(), version=version, error=error.to_error_info())))

    def _bad_log_request(self, bad: Undecodable) -> None:
        correlation_id = string_field(bad.payload, 1)  # every log request's correlation_id
        error = InvalidArgument(f"{bad.why} ({type_name(bad.kind)} undecodable)")
        self._sender.send(log_error(correlation_id, error.to_error_info()))

    def _bad_update_instances(self, bad: Undecodable) -> None:
        """Start what decodes, refuse what does not (with the best identity its bytes allow),
        report all."""
        self._run_update(update_instances_from_bytes(bad.payload))


def _last_field(frame: bytes, number: int) -> bytes:
    """The payload of the last ``number`` field of a frame that decoded (protobuf's oneof rule:
    the last one wins)."""
    payload = b""
    for field_number, wire_type, field in walk_fields(frame):
        if field_number == number and wire_type == 2 and field is not None:
            payload = field
    return payload
