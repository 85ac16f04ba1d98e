"""Instance and crash logs: what the launcher recorded (agent/instancelog.py format), selected by
instance filter and time. Planning is pure; reading the files is a small generator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence

from aos_sm.proto.common.v2 import common_pb2

from ..errors import RuntimeFailure
from ..instancelog import parse_line
from ..ports import CrashRecord, InstanceKey, InstanceLogFile
from .timerange import TimeRange


def describe_key(key: InstanceKey) -> str:
    return f"{key.item_id}/{key.subject_id}/{key.instance}"


@dataclass(frozen=True)
class Section:
    """Lines of one file within a range, optionally after a header line."""

    path: Path
    window: TimeRange
    header: bytes = b""


def plan_instance_log(files: Sequence[InstanceLogFile], instance_filter: common_pb2.InstanceFilter,
                      window: TimeRange) -> List[Section]:
    """One section per matching instance, in the launcher's order. A header names the instance
    only when several match, so a one-instance log is exactly what the instance wrote."""
    matching = [file for file in files if file.key.matches(instance_filter)]
    several = len(matching) > 1
    return [
        Section(file.path, window, f"--- instance {describe_key(file.key)}\n".encode() if several else b"")
        for file in matching
    ]


def plan_crash_log(crashes: Sequence[CrashRecord], instance_filter: common_pb2.InstanceFilter,
                   window: TimeRange) -> List[Section]:
    """One section per matching crash whose ``crashed_at`` is within the request's range, oldest
    crash first: a header naming the instance, the crash time and the reason, then the lines the
    run wrote (stamped within ``[started_at, crashed_at]``)."""
    selected = sorted(
        (crash for crash in crashes if crash.key.matches(instance_filter) and window.contains(crash.crashed_at)),
        key=lambda crash: crash.crashed_at,
    )
    return [
        Section(
            crash.log_path,
            TimeRange(crash.started_at, crash.crashed_at),
            (f"--- crash of instance {describe_key(crash.key)} at "
             f"{crash.crashed_at.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}: {crash.reason}\n").encode("utf-8", "replace"),
        )
        for crash in selected
    ]


def section_lines(sections: Sequence[Section]) -> Iterator[bytes]:
    """The recorded lines (stamp included) of each section; lines with a torn stamp are skipped."""
    for section in sections:
        if section.header:
            yield section.header
        try:
            handle = open(section.path, "rb")
        except FileNotFoundError:
            continue  # the launcher names the file before the instance writes its first line
        except OSError as err:
            raise RuntimeFailure.from_os_error(err, "cannot read the instance log") from err
        try:
            with handle:
                for line in handle:
                    parsed = parse_line(line)
                    if parsed is not None and section.window.contains(parsed[0]):
                        yield line if line.endswith(b"\n") else line + b"\n"
        except OSError as err:
            raise RuntimeFailure.from_os_error(err, "cannot read the instance log") from err
