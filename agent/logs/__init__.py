"""Logs: the system log (journald or a syslog file), instance and crash logs, streamed to CM in
gzip parts; and journal alerts. ``service.LogService`` implements LogsPort."""
