"""The node sampler over a fixture /proc: cpu in DMIPS, the ram formula, traffic over the period."""

from __future__ import annotations

import os
from pathlib import Path

from aos_sm.agent.monitoring.samplers import NodeSampler, directory_used_bytes

MEMINFO = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 200 kB\nSReclaimable: 50 kB\n"
ROUTE = ("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
         "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")


def net_dev(eth0_rx: int, eth0_tx: int) -> str:
    return ("h1\nh2\n"
            f"  lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n"
            f"eth0: {eth0_rx} 1 0 0 0 0 0 0 {eth0_tx} 1 0 0 0 0 0 0\n")


def write_proc(root: Path, busy: int, total: int, rx: int, tx: int) -> None:
    (root / "proc/net").mkdir(parents=True, exist_ok=True)
    idle = total - busy
    (root / "proc/stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n")
    (root / "proc/meminfo").write_text(MEMINFO)
    (root / "proc/net/dev").write_text(net_dev(rx, tx))
    (root / "proc/net/route").write_text(ROUTE)


def test_node_sample_over_a_period(tmp_path: Path) -> None:
    write_proc(tmp_path, busy=100, total=1000, rx=5000, tx=700)
    sampler = NodeSampler(root=tmp_path, max_dmips=8000, partitions=[("work", tmp_path)], uplink_interfaces=None)
    write_proc(tmp_path, busy=100 + 250, total=2000, rx=6500, tx=900)
    usage, problems = sampler.sample(123.0)
    assert problems == []
    assert usage.cpu == 2000  # a quarter busy of 8000 DMIPS
    assert usage.ram == (1000 - 100 - 50 - 200 - 50) * 1024
    assert (usage.download, usage.upload) == (1500, 200)  # eth0 only: the default route's interface
    assert [name for name, _ in usage.partitions] == ["work"] and usage.partitions[0][1] > 0
    # A counter that went back (interface re-created) counts from zero, never negative.
    write_proc(tmp_path, busy=350, total=2000, rx=300, tx=950)
    usage, _ = sampler.sample(124.0)
    assert (usage.cpu, usage.download, usage.upload) == (0, 300, 50)


def test_configured_uplinks_and_unreadable_files_are_named(tmp_path: Path) -> None:
    write_proc(tmp_path, busy=0, total=10, rx=0, tx=0)
    sampler = NodeSampler(root=tmp_path, max_dmips=100, partitions=[("gone", tmp_path / "missing")],
                          uplink_interfaces=["lo"])
    assert sampler.interfaces() == ("lo",)
    (tmp_path / "proc/stat").unlink()
    usage, problems = sampler.sample(1.0)
    assert usage.cpu == 0 and usage.partitions == (("gone", 0),)
    assert any("/proc/stat" in p for p in problems) and any("'gone'" in p for p in problems)


def test_directory_used_bytes_counts_allocated_blocks_once_per_inode(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/a").write_bytes(b"x" * 100000)
    empty = directory_used_bytes(tmp_path / "nothing-here")
    before = directory_used_bytes(tmp_path)
    os.link(tmp_path / "sub/a", tmp_path / "link")
    assert empty == 0 and before >= 100000
    assert directory_used_bytes(tmp_path) == before
