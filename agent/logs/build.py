"""Build the logs subsystem from the agent's configuration (called from agent/app.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

from ..config import JOURNALD, AgentConfig
from ..ports import InstanceLogSourcePort, Sender
from .alerts import AlertRules, JournalAlerts
from .journal import JournalSource
from .service import LogService, SystemLogSource
from .syslog import SyslogFileSource


def system_log_source(config: AgentConfig) -> SystemLogSource:
    if config.system_log == JOURNALD:
        return JournalSource()
    # None only for a config that agent/registration.py did not complete: the Buildroot default.
    return SyslogFileSource(Path(config.system_log or "/var/log/messages"))


def build_logs(config: AgentConfig, sender: Sender,
               instances: InstanceLogSourcePort) -> Tuple[LogService, Optional[JournalAlerts]]:
    """The LogsPort, and the journal-alert follower where the system log is the journal (a
    syslog file has no priorities to alert on)."""
    service = LogService(sender, system_log=system_log_source(config), instances=instances,
                         max_part_size=config.max_part_size, max_part_count=config.max_part_count)
    alerts = None
    if config.system_log == JOURNALD:
        alerts = JournalAlerts(sender, AlertRules.build(config.journal_alerts, os.getpid()), instances)
    return service, alerts
