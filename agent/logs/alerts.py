"""Journal alerts (reference ``journalAlerts``): severe journal entries become CM alerts.

An entry at or above a priority (a lower syslog number is more severe) becomes:
- an InstanceAlert when it comes from an instance (its ``_SYSTEMD_CGROUP`` or ``_SYSTEMD_UNIT``
  contains the instance's cgroup as the launcher reports it) and is at ``serviceAlertPriority``;
- a CoreAlert when it comes from the agent itself (its pid) or another Aos core unit, at
  ``systemAlertPriority``;
- a SystemAlert for anything else at ``systemAlertPriority``;
unless its message matches one of the ``filter`` regular expressions.

:func:`journal_alert` is the pure mapping; :class:`JournalAlerts` follows ``journalctl -f`` on a
thread and restarts it after the last entry seen (``--after-cursor``) should it exit.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from google.protobuf.timestamp_pb2 import Timestamp

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..config import JournalAlertsConfig
from ..ports import InstanceLogFile, InstanceLogSourcePort, Sender
from .journal import entry_time, field_text, journalctl_command, read_entries

log = logging.getLogger(__name__)

_MAX_RETRY_DELAY = 300.0

# The reference's core units and the CoreAlert.core_component each one reports as (PROTOCOL.md).
CORE_UNITS: Tuple[Tuple[str, str], ...] = (
    ("aos-communicationmanager", "CM"),
    ("aos-servicemanager", "SM"),
    ("aos-iamanager", "IAM"),
    ("aos-messageproxy", "MP"),
)


@dataclass(frozen=True)
class AlertRules:
    config: JournalAlertsConfig
    filters: Tuple["re.Pattern[str]", ...]
    own_pid: int

    @classmethod
    def build(cls, config: JournalAlertsConfig, own_pid: int) -> "AlertRules":
        return cls(config, tuple(re.compile(pattern) for pattern in config.filters), own_pid)


def _owner(entry: Dict[str, Any], instances: Sequence[InstanceLogFile]) -> Optional[InstanceLogFile]:
    where = (field_text(entry.get("_SYSTEMD_CGROUP")), field_text(entry.get("_SYSTEMD_UNIT")))
    for instance in instances:
        if instance.cgroup and any(instance.cgroup in text for text in where if text):
            return instance
    return None


def _core_component(entry: Dict[str, Any], own_pid: int) -> Optional[str]:
    if field_text(entry.get("_PID")) == str(own_pid):
        return "SM"
    unit = field_text(entry.get("_SYSTEMD_UNIT"))
    for prefix, component in CORE_UNITS:
        if unit.startswith(prefix):
            return component
    return None


def journal_alert(entry: Dict[str, Any], rules: AlertRules,
                  instances: Sequence[InstanceLogFile]) -> Optional[sm_pb2.Alert]:
    """The alert one journal entry (a ``journalctl -o json`` object) raises, or None."""
    try:
        priority = int(field_text(entry.get("PRIORITY")))
    except ValueError:
        return None  # no priority: not something anyone flagged
    if priority > max(rules.config.system_alert_priority, rules.config.service_alert_priority):
        return None
    message = field_text(entry.get("MESSAGE"))
    if any(pattern.search(message) for pattern in rules.filters):
        return None
    stamp = Timestamp()
    when = entry_time(entry)
    if when is not None:
        stamp.FromMicroseconds(int(when.timestamp() * 1_000_000))
    owner = _owner(entry, instances)
    if owner is not None:
        if priority > rules.config.service_alert_priority:
            return None
        return sm_pb2.Alert(timestamp=stamp, instance_alert=sm_pb2.InstanceAlert(
            instance=owner.key.to_ident(), message=message))
    if priority > rules.config.system_alert_priority:
        return None
    component = _core_component(entry, rules.own_pid)
    if component is not None:
        return sm_pb2.Alert(timestamp=stamp, core_alert=sm_pb2.CoreAlert(core_component=component, message=message))
    return sm_pb2.Alert(timestamp=stamp, system_alert=sm_pb2.SystemAlert(message=message))


class JournalAlerts:
    """Follows the journal on its own thread and sends each entry's alert through the sender."""

    def __init__(self, sender: Sender, rules: AlertRules, instances: InstanceLogSourcePort, *,
                 journalctl: str = "journalctl", directory: Optional[Path] = None,
                 retry_delay: float = 5.0) -> None:
        self._sender = sender
        self._rules = rules
        self._instances = instances
        self._journalctl = journalctl
        self._directory = directory
        self._retry_delay = retry_delay
        self._stop = threading.Event()
        self._cursor = ""
        self._since = time.time()
        self._process: Optional["subprocess.Popen[bytes]"] = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="journal-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        self._stop.set()
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.kill()  # the follower's read ends, and with it the thread
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _command(self) -> List[str]:
        # From the last entry seen; at first from when the agent started (a second early, as
        # --since takes whole seconds: the exact start is applied per entry).
        start = [f"--after-cursor={self._cursor}"] if self._cursor else [f"--since=@{int(self._since)}"]
        return journalctl_command(self._journalctl, self._directory, ["--follow", *start])

    def _started(self, process: "subprocess.Popen[bytes]") -> None:
        with self._lock:
            self._process = process
            if self._stop.is_set():
                process.kill()

    def _run(self) -> None:
        delay = self._retry_delay
        while not self._stop.is_set():
            try:
                for entry in read_entries(self._command(), self._started):
                    delay = self._retry_delay  # journalctl works again: the next failure waits the least
                    self._cursor = field_text(entry.get("__CURSOR")) or self._cursor
                    when = entry_time(entry)
                    if when is None or when.timestamp() < self._since:
                        continue
                    alert = journal_alert(entry, self._rules, self._instances.instance_logs())
                    if alert is not None:
                        self._sender.send(sm_pb2.SMOutgoingMessages(alert=alert))
                    if self._stop.is_set():
                        break
            except Exception as err:
                if not self._stop.is_set():
                    log.warning("journal alerts: %s; following again in %.0f s", err, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)
