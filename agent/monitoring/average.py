"""Usage samples and their moving average (pure).

PROTOCOL.md, "Monitoring units": AverageMonitoring is the moving average over
``averageWindow / pollPeriod`` samples. The window keeps that many samples; the average is their
plain mean, field by field, and a partition's mean over the samples that carry it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2
from google.protobuf.timestamp_pb2 import Timestamp


@dataclass(frozen=True)
class Usage:
    """One sample in reported units: cpu in DMIPS, ram and partitions in bytes, traffic in bytes
    over the poll period. ``timestamp`` is wall-clock seconds since the epoch."""

    timestamp: float
    cpu: int = 0
    ram: int = 0
    partitions: Tuple[Tuple[str, int], ...] = ()
    download: int = 0
    upload: int = 0

    def values(self) -> Dict[str, int]:
        """By alert parameter name (PROTOCOL.md: cpu, ram, download, upload, a partition's name)."""
        values = dict(self.partitions)
        values.update(cpu=self.cpu, ram=self.ram, download=self.download, upload=self.upload)
        return values

    def to_monitoring_data(self) -> sm_pb2.MonitoringData:
        stamp = Timestamp()
        stamp.FromNanoseconds(int(self.timestamp * 1e9))
        return sm_pb2.MonitoringData(
            timestamp=stamp, ram=self.ram, cpu=self.cpu, download=self.download, upload=self.upload,
            partitions=[sm_pb2.PartitionUsage(name=name, used_size=used) for name, used in self.partitions],
        )


def window_samples(average_window: float, poll_period: float) -> int:
    """How many samples the moving average spans: averageWindow / pollPeriod, at least one."""
    return max(1, int(round(average_window / poll_period)))


class MovingAverage:
    def __init__(self, size: int) -> None:
        self._samples: Deque[Usage] = collections.deque(maxlen=max(1, size))

    def add(self, usage: Usage) -> None:
        self._samples.append(usage)

    def average(self) -> Optional[Usage]:
        """The mean of the kept samples, stamped with the newest one's time; None before any."""
        if not self._samples:
            return None
        count = len(self._samples)
        partitions: Dict[str, List[int]] = {}
        for sample in self._samples:
            for name, used in sample.partitions:
                partitions.setdefault(name, []).append(used)
        return Usage(
            timestamp=self._samples[-1].timestamp,
            cpu=_mean([s.cpu for s in self._samples], count),
            ram=_mean([s.ram for s in self._samples], count),
            partitions=tuple((name, _mean(used, len(used))) for name, used in partitions.items()),
            download=_mean([s.download for s in self._samples], count),
            upload=_mean([s.upload for s in self._samples], count),
        )


def _mean(values: List[int], count: int) -> int:
    return int(round(sum(values) / count))
