"""packaging/: the systemd unit, the BusyBox/SysV start script and the default configuration
that images install (the Buildroot package installs them from here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest

from contract_cm import ContractCM

from aos_sm.agent.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
WAIT = 30.0


def test_the_default_config_parses_without_warnings() -> None:
    config = parse_config((PACKAGING / "aos_servicemanager.cfg").read_text())
    assert config.warnings == ()
    assert config.tls_mode == "mtls" and config.cm_server_url


def test_the_unit_and_the_script_run_the_installed_config() -> None:
    unit = (PACKAGING / "aos-sm.service").read_text()
    assert "ExecStart=/usr/bin/aos-sm run --config /etc/aos/aos_servicemanager.cfg\n" in unit
    assert 'CONFIG="/etc/aos/aos_servicemanager.cfg"' in (PACKAGING / "S95aos-sm").read_text()
    for line in ("Type=notify", "Restart=on-failure"):
        assert line + "\n" in unit
    assert os.access(PACKAGING / "S95aos-sm", os.X_OK)


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    system_units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                         if (p / "multi-user.target").exists()), None)
    if system_units is None:
        pytest.skip("systemd's own units (multi-user.target) are not installed")
    # A root with the unit, systemd's targets and an executable at ExecStart's path: verify
    # checks all three. The unit file itself is the packaged one, unchanged.
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)  # under 1 MB
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(PACKAGING / "aos-sm.service", root / "etc/systemd/system/aos-sm.service")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/aos-sm").write_text("#!/bin/sh\n")
    (root / "usr/bin/aos-sm").chmod(0o755)
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", "/etc/systemd/system/aos-sm.service"],
        capture_output=True, text=True, timeout=120,
    )
    # verify exits 0 on unknown keys and bad values too: it only warns, so read what it says.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_start_script_follows_buildroots_start_script_rules() -> None:
    """The rules of Buildroot's manual ("The SNNfoo start script") and its check-package."""
    path = PACKAGING / "S95aos-sm"
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    daemon = [line for line in lines if line.startswith("DAEMON=")]
    assert daemon == ['DAEMON="aos-sm"']
    assert re.fullmatch(r"S\d\daos-sm", path.name)
    assert 'PIDFILE="/var/run/$DAEMON.pid"' in lines
    assert '[ -r "/etc/default/$DAEMON" ] && . "/etc/default/$DAEMON"' in lines
    for lineno, line in enumerate(lines, 1):
        assert not re.match(r"^\t* ", line.rstrip()), f"{path.name}:{lineno}: indent with tabs: {line!r}"
        assert line == line.rstrip(), f"{path.name}:{lineno}: trailing whitespace"
    assert re.search(r"^\tstart\|stop\|restart\)$", path.read_text(), re.MULTILINE)


def test_shellcheck_finds_nothing_in_the_start_script() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    result = subprocess.run([shellcheck, "--shell=sh", str(PACKAGING / "S95aos-sm")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# The start script for real, with BusyBox's start-stop-daemon and with Debian's.


def _start_stop_daemons() -> Iterator[str]:
    yield "busybox"
    yield "dpkg"


@pytest.fixture(params=list(_start_stop_daemons()))
def script_env(request: pytest.FixtureRequest, tmp_path: Path) -> Dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if request.param == "busybox":
        busybox = shutil.which("busybox")
        if busybox is None or subprocess.run([busybox, "start-stop-daemon", "--help"],
                                             capture_output=True).returncode not in (0, 1):
            pytest.skip("busybox with start-stop-daemon is not installed (Debian package busybox)")
        (bin_dir / "start-stop-daemon").symlink_to(busybox)
    else:
        found = shutil.which("start-stop-daemon", path="/usr/sbin:/sbin")
        if found is None:
            pytest.skip("Debian's start-stop-daemon (package dpkg) is not installed")
        (bin_dir / "start-stop-daemon").symlink_to(found)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path)}


def _installed_script(tmp_path: Path) -> Path:
    """The packaged script with its three system paths moved under tmp_path (nothing else)."""
    aos_sm = Path(sys.executable).parent / "aos-sm"
    if not aos_sm.exists():
        pytest.skip(f"the aos-sm entry point is not installed next to {sys.executable} (pip install -e .)")
    text = (PACKAGING / "S95aos-sm").read_text()
    text = text.replace("/usr/bin/$DAEMON", f"{aos_sm.parent}/$DAEMON")
    text = text.replace("/var/run/", f"{tmp_path}/run/").replace("/etc/default/", f"{tmp_path}/default/")
    (tmp_path / "run").mkdir()
    (tmp_path / "default").mkdir()
    script = tmp_path / "S95aos-sm"
    script.write_text(text)
    return script


def test_the_start_script_starts_once_stops_and_restarts(
    contract_cm: ContractCM, tmp_path: Path, script_env: Dict[str, str]
) -> None:
    script = _installed_script(tmp_path)
    config = tmp_path / "sm.json"
    config.write_text(json.dumps({
        "nodeId": "node-init", "cmServerURL": contract_cm.address, "network": {"enabled": False}, "tlsMode": "plaintext",
        "workingDir": str(tmp_path / "work"), "resourcesConfigFile": str(tmp_path / "none.cfg"),
    }))
    log = tmp_path / "aos-sm.log"
    (tmp_path / "default/aos-sm").write_text(
        f'CONFIG="{config}"\nLOGFILE="{log}"\nAOS_SM_ARGS="--log-level debug"\n')
    pidfile = tmp_path / "run/aos-sm.pid"

    def init(action: str) -> str:
        result = subprocess.run(["/bin/sh", str(script), action], env=script_env,
                                capture_output=True, text=True, timeout=WAIT)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    try:
        assert init("start") == "Starting aos-sm: OK\n"
        contract_cm.wait_session(0, WAIT).wait_for("node_instances_status", WAIT)
        pid = int(pidfile.read_text())
        # The pidfile names the agent itself (the shell exec'ed into it), not a wrapper.
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "aos-sm"
        # AOS_SM_ARGS goes before the command, where the global options live.
        assert Path(f"/proc/{pid}/cmdline").read_text().split("\0")[2:6] == [
            "--log-level", "debug", "run", "--config"]
        assert init("start") == "Starting aos-sm: already running\n"
        assert int(pidfile.read_text()) == pid
        assert init("restart") == "Stopping aos-sm: OK\nStarting aos-sm: OK\n"
        contract_cm.wait_session(1, WAIT).wait_for("node_instances_status", WAIT)
        assert not Path(f"/proc/{pid}").exists()
        second = int(pidfile.read_text())
        assert init("stop") == "Stopping aos-sm: OK\n"
        assert not pidfile.exists() and not Path(f"/proc/{second}").exists()
        assert len(contract_cm.sessions) == 2
    finally:
        if pidfile.exists():
            subprocess.run(["kill", pidfile.read_text().strip()], check=False)
    text = log.read_text()
    assert text.count("registered with CM as node node-init") == 2, text
    assert "Traceback" not in text
