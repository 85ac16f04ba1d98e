"""Real cgroups for tests and benches: create one per instance under every controller the monitor
reads, run a process in it, and remove it all afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from aos_sm.hw.cgroups import probe_cgroup_layout

# Waits for a line on stdin (so it is in its cgroup before it allocates), then touches
# ``MiB`` MiB and spins; its memory is charged to the cgroup it sits in when it allocates.
BUSY = "import sys; sys.stdin.readline(); block = b'x' * ({mib} << 20)\nwhile True: pass"
IDLE = "import sys; sys.stdin.readline(); block = b'x' * ({mib} << 20); sys.stdin.readline()"


def cgroup_dirs_or_skip_reason() -> tuple[List[Path], Optional[str]]:
    """The hierarchies to create instance cgroups in (v1 cpuacct + memory, else v2), or why not."""
    if os.geteuid() != 0:
        return [], "creating cgroups needs root"
    layout = probe_cgroup_layout(Path("/"))
    v1 = {c: m for m in layout.mounts if m.version == 1 for c in m.controllers}
    if "cpuacct" in v1 and "memory" in v1:
        return sorted({Path(v1["cpuacct"].mount_point), Path(v1["memory"].mount_point)}), None
    v2 = [m for m in layout.mounts if m.version == 2]
    if v2 and "memory" in v2[0].controllers:
        return [Path(v2[0].mount_point)], None
    return [], "the node has neither v1 cpuacct+memory nor a v2 tree with the memory controller"


class InstanceCgroup:
    """``<parent>/<name>`` under each hierarchy, with one process started in it."""

    def __init__(self, hierarchies: List[Path], parent: str, name: str) -> None:
        self.relative = f"{parent}/{name}"
        self.dirs = [h / parent / name for h in hierarchies]
        for hierarchy in hierarchies:
            (hierarchy / parent).mkdir(exist_ok=True)
            subtree = hierarchy / parent / "cgroup.subtree_control"
            if subtree.exists():  # v2: let the child account memory (and cpu where offered)
                offered = (hierarchy / parent / "cgroup.controllers").read_text().split()
                wanted = [f"+{c}" for c in ("cpu", "memory") if c in offered]
                if wanted:
                    subtree.write_text(" ".join(wanted))
        for directory in self.dirs:
            directory.mkdir(exist_ok=True)
        self.process: Optional[subprocess.Popen[bytes]] = None

    def run(self, code: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(process.pid))
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.flush()
        self.process = process
        return process

    def remove(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        for directory in self.dirs:
            for _ in range(50):  # the kernel empties a cgroup shortly after its last task exits
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def remove_parent(hierarchies: List[Path], parent: str) -> None:
    for hierarchy in hierarchies:
        try:
            (hierarchy / parent).rmdir()
        except OSError:
            pass
