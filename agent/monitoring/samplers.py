"""Samplers: read the node's and an instance's usage counters and turn them into a ``Usage``.

Thin adapters over hw/ (the only place that opens /proc and /sys) plus ``os.statvfs`` and a
directory walk for partitions. Each keeps the previous counter reading, so cpu and traffic are
rates over the poll period. A figure that cannot be read is reported as 0 and named in the
returned problems, which the monitor turns into rate-limited CoreAlerts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from aos_sm.hw import usage as hw_usage
from aos_sm.hw.memory import read_meminfo, used_ram_from

from .average import Usage

Problems = List[str]
# The fewest /proc/stat ticks (all CPUs together) a cpu rate is computed over.
MIN_CPU_TICKS = 10


def partition_used_and_size(path: Path) -> Tuple[int, int]:
    """Used and total bytes of the filesystem holding ``path`` (statvfs(3): blocks in f_frsize)."""
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize, stats.f_blocks * stats.f_frsize


def directory_used_bytes(path: Path) -> int:
    """Bytes allocated to the files under ``path``, as du(1) counts them (st_blocks of 512 B);
    hard links counted once. Files that vanish during the walk are skipped."""
    total = 0
    seen = set()
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            if stat.st_nlink > 1:
                if (stat.st_dev, stat.st_ino) in seen:
                    continue
                seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_blocks * 512
    return total



def partition_sizes(partitions: Sequence[Tuple[str, Path]]) -> Dict[str, int]:
    """name -> size in bytes of each partition's file system; one that cannot be read is left
    out (its rule then has nothing to convert a percent against)."""
    sizes = {}
    for name, path in partitions:
        try:
            sizes[name] = partition_used_and_size(path)[1]
        except OSError:
            continue
    return sizes

class NodeSampler:
    """The node's cpu (DMIPS), ram (PROTOCOL.md formula), partitions and uplink traffic."""

    def __init__(self, *, root: Path, max_dmips: int, partitions: Sequence[Tuple[str, Path]],
                 uplink_interfaces: Optional[Sequence[str]], count_uplinks: bool = True) -> None:
        self._root = root
        self._max_dmips = max_dmips
        self._partitions = tuple(partitions)
        self._interfaces = tuple(uplink_interfaces) if uplink_interfaces is not None else None
        # False when the network manager accounts traffic: its figures replace the uplinks'.
        self._count_uplinks = count_uplinks
        self._cpu = hw_usage.read_cpu_times(root)
        self._first = True
        self._traffic = self._read_traffic() if count_uplinks else None

    def partition_sizes(self) -> Dict[str, int]:
        return partition_sizes(self._partitions)

    def interfaces(self) -> Tuple[str, ...]:
        """The configured uplinks, or those that carry a default route right now."""
        if self._interfaces is not None:
            return self._interfaces
        return hw_usage.read_default_route_interfaces(self._root)

    def sample(self, timestamp: float) -> Tuple[Usage, Problems]:
        problems: Problems = []
        cpu = 0
        times = hw_usage.read_cpu_times(self._root)
        if times is None:
            problems.append("node cpu: /proc/stat is unreadable")
        elif self._cpu is not None:
            # /proc/stat counts in clock ticks (USER_HZ, 100 a second per CPU): over a few ticks a
            # rate reads as 0 % or 100 %. The first sample, taken at start right after the
            # baseline, then gives the share since boot instead.
            short = self._first and times.total - self._cpu.total < MIN_CPU_TICKS
            baseline = hw_usage.CpuTimes(0, 0) if short else self._cpu
            cpu = min(self._max_dmips, int(round(hw_usage.busy_fraction(baseline, times) * self._max_dmips)))
        self._cpu, self._first = times, False
        meminfo = read_meminfo(self._root)
        if "MemTotal" not in meminfo:
            problems.append("node ram: /proc/meminfo is unreadable")
        partitions = []
        for name, path in self._partitions:
            try:
                partitions.append((name, partition_used_and_size(path)[0]))
            except OSError as err:
                problems.append(f"partition {name!r} ({path}): {err.strerror or err}")
                partitions.append((name, 0))
        download = upload = 0
        traffic = self._read_traffic() if self._count_uplinks else None
        if traffic is None and self._count_uplinks:
            problems.append("node traffic: /proc/net/dev is unreadable")
        elif traffic is not None and self._traffic is not None:
            for name, (received, sent) in traffic.items():
                before = self._traffic.get(name)
                if before is not None:
                    # A counter that went back (interface re-created) restarts from zero.
                    download += received - before[0] if received >= before[0] else received
                    upload += sent - before[1] if sent >= before[1] else sent
        self._traffic = traffic
        return Usage(timestamp, cpu=cpu, ram=used_ram_from(meminfo), partitions=tuple(partitions),
                     download=download, upload=upload), problems

    def _read_traffic(self) -> Optional[Dict[str, Tuple[int, int]]]:
        counters = hw_usage.read_net_dev(self._root)
        if counters is None:
            return None
        wanted = self.interfaces()
        return {name: counters[name] for name in wanted if name in counters}


class InstanceSampler:
    """One instance's cpu (DMIPS, share of every CPU of the node) and ram from its cgroup, and the
    used bytes of its partitions (directories)."""

    def __init__(self, *, dirs: hw_usage.CgroupDirs, cpus: int, max_dmips: int,
                 partitions: Sequence[Tuple[str, Path]], clock: Callable[[], float] = time.monotonic) -> None:
        self._dirs = dirs
        self._cpus = max(1, cpus)
        self._max_dmips = max_dmips
        self._partitions = tuple(partitions)
        self._clock = clock
        self._last = (clock(), hw_usage.read_cgroup_usage(dirs).cpu_usec)

    def partition_sizes(self) -> Dict[str, int]:
        return partition_sizes(self._partitions)

    def sample(self, timestamp: float) -> Tuple[Usage, Problems]:
        problems: Problems = []
        now = self._clock()
        counters = hw_usage.read_cgroup_usage(self._dirs)
        cpu = 0
        last_time, last_usec = self._last
        if counters.cpu_usec is None:
            problems.append(f"cpu usage of cgroup {self._dirs.cpu} is unreadable")
        elif last_usec is not None and now > last_time and counters.cpu_usec >= last_usec:
            share = (counters.cpu_usec - last_usec) / ((now - last_time) * 1e6 * self._cpus)
            cpu = min(self._max_dmips, int(round(share * self._max_dmips)))
        self._last = (now, counters.cpu_usec)
        if counters.memory_bytes is None:
            problems.append(f"memory usage of cgroup {self._dirs.memory} is unreadable")
        partitions = tuple((name, directory_used_bytes(path)) for name, path in self._partitions)
        return Usage(timestamp, cpu=cpu, ram=counters.memory_bytes or 0, partitions=partitions), problems
