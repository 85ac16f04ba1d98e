"""Usage counters: /proc/stat, /proc/net/dev, /proc/net/route and cgroup v1/v2 files in a tree."""

from __future__ import annotations

from pathlib import Path

from aos_sm.hw.cgroups import CgroupLayout, CgroupMount
from aos_sm.hw.usage import (
    CgroupDirs, CpuTimes, busy_fraction, parse_cpu_stat_usage_usec, parse_default_route_interfaces,
    parse_net_dev, parse_proc_stat_cpu, read_cgroup_usage, read_cpu_times, read_default_route_interfaces,
    read_net_dev, resolve_cgroup_dirs,
)

PROC_STAT = (
    "cpu  62012 10 15240 390460 1334 0 378 64 7 0\n"
    "cpu0 18577 0 5435 210351 113 0 104 31 0 0\n"
    "intr 1205293 0 0\nctxt 3083192\n"
)
NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
    "    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0\n"
    "  eth0: 9876543    5000    0    0    0     0          0         0  1234567    4000    0    0    0     0       0          0\n"
)
ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "wlan0\t00000000\t01AAA8C0\t0002\t0\t0\t600\t00000000\t0\t0\t0\n"
)


def test_proc_stat_cpu_line_iowait_is_idle_and_guest_is_not_counted_twice() -> None:
    times = parse_proc_stat_cpu(PROC_STAT)
    assert times == CpuTimes(busy=62012 + 10 + 15240 + 378 + 64, total=62012 + 10 + 15240 + 390460 + 1334 + 378 + 64)
    assert parse_proc_stat_cpu("intr 1\n") is None and parse_proc_stat_cpu("cpu a b c d\n") is None


def test_busy_fraction_is_bounded_and_zero_without_elapsed_time() -> None:
    assert busy_fraction(CpuTimes(10, 100), CpuTimes(60, 200)) == 0.5
    assert busy_fraction(CpuTimes(10, 100), CpuTimes(10, 100)) == 0.0
    assert busy_fraction(CpuTimes(10, 100), CpuTimes(500, 200)) == 1.0


def test_net_dev_bytes_per_interface() -> None:
    assert parse_net_dev(NET_DEV) == {"lo": (123456, 123456), "eth0": (9876543, 1234567)}


def test_default_routes_need_zero_destination_zero_mask_and_up() -> None:
    assert parse_default_route_interfaces(ROUTE) == ("eth0",)  # wlan0's route is not RTF_UP


def test_readers_under_a_root(tmp_path: Path) -> None:
    (tmp_path / "proc/net").mkdir(parents=True)
    assert read_cpu_times(tmp_path) is None and read_net_dev(tmp_path) is None
    assert read_default_route_interfaces(tmp_path) == ()
    (tmp_path / "proc/stat").write_text(PROC_STAT)
    (tmp_path / "proc/net/dev").write_text(NET_DEV)
    (tmp_path / "proc/net/route").write_text(ROUTE)
    assert read_cpu_times(tmp_path) == parse_proc_stat_cpu(PROC_STAT)
    assert read_net_dev(tmp_path) == parse_net_dev(NET_DEV)
    assert read_default_route_interfaces(tmp_path) == ("eth0",)


def layout(*mounts: CgroupMount) -> CgroupLayout:
    return CgroupLayout("hybrid", mounts, (), (), (), ())


def test_hybrid_node_reads_v1_cpuacct_and_memory(tmp_path: Path) -> None:
    hybrid = layout(CgroupMount(1, "/sys/fs/cgroup/cpu,cpuacct", "/", ("cpu", "cpuacct")),
                    CgroupMount(1, "/sys/fs/cgroup/memory", "/", ("memory",)),
                    CgroupMount(2, "/sys/fs/cgroup/unified", "/", ()))
    dirs = resolve_cgroup_dirs(hybrid, "/aos-sm/inst1", tmp_path)
    cpu_dir = tmp_path / "sys/fs/cgroup/cpu,cpuacct/aos-sm/inst1"
    memory_dir = tmp_path / "sys/fs/cgroup/memory/aos-sm/inst1"
    assert dirs == CgroupDirs(cpu=(1, cpu_dir), memory=(1, memory_dir))
    assert read_cgroup_usage(dirs).cpu_usec is None  # not created yet: unknown, not a crash
    cpu_dir.mkdir(parents=True)
    memory_dir.mkdir(parents=True)
    (cpu_dir / "cpuacct.usage").write_text("2500123456\n")  # nanoseconds
    (memory_dir / "memory.usage_in_bytes").write_text("67108864\n")
    usage = read_cgroup_usage(dirs)
    assert (usage.cpu_usec, usage.memory_bytes) == (2500123, 67108864)
    (memory_dir / "memory.usage_in_bytes").write_text("garbage\n")
    assert read_cgroup_usage(dirs).memory_bytes is None


def test_unified_node_reads_cpu_stat_and_memory_current(tmp_path: Path) -> None:
    unified = layout(CgroupMount(2, "/sys/fs/cgroup", "/", ("cpu", "memory")))
    dirs = resolve_cgroup_dirs(unified, "aos-sm/inst1", tmp_path)
    directory = tmp_path / "sys/fs/cgroup/aos-sm/inst1"
    assert dirs == CgroupDirs(cpu=(2, directory), memory=(2, directory))
    directory.mkdir(parents=True)
    (directory / "cpu.stat").write_text("usage_usec 987654\nuser_usec 900000\nsystem_usec 87654\n")
    (directory / "memory.current").write_text("1048576\n")
    usage = read_cgroup_usage(dirs)
    assert (usage.cpu_usec, usage.memory_bytes) == (987654, 1048576)
    assert parse_cpu_stat_usage_usec("user_usec 1\n") is None


def test_no_cgroup_mounts_means_nothing_to_read(tmp_path: Path) -> None:
    dirs = resolve_cgroup_dirs(layout(), "x", tmp_path)
    assert dirs == CgroupDirs(None, None)
    assert read_cgroup_usage(dirs).memory_bytes is None


def test_a_mount_of_a_subtree_drops_its_root_from_the_path(tmp_path: Path) -> None:
    contained = layout(CgroupMount(2, "/sys/fs/cgroup", "/docker/abc", ("memory",)))
    dirs = resolve_cgroup_dirs(contained, "docker/abc/aos-sm/inst1", tmp_path)
    assert dirs.memory == (2, tmp_path / "sys/fs/cgroup/aos-sm/inst1")
