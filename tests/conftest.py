"""Shared fixtures: a CM built from the wire contract, and a throwaway PKI made with openssl."""

from __future__ import annotations

import os

# Tests fork openssl and the agent while gRPC threads run: see agent/cli.py,
# _disable_grpc_fork_handlers. Must precede the first grpc import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from pathlib import Path
from typing import Iterator, Optional

import grpc
import pytest

from contract import Contract
from contract_cm import CMFactory, ContractCM
from tls import TLSMaterial, make_tls_material, openssl_path


# Set by .ci/arm64.sh when the suite runs on Debian's arm64 stack under qemu-user: the tests
# marked host_only (PyPI venvs, mypy, benchmarks) and the system tests (root, cgroups, runc) are
# skipped there with their reason; everything else runs as on the host.
EMULATED = os.environ.get("AOS_SM_EMULATED") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not EMULATED:
        return
    for item in items:
        host_only = item.get_closest_marker("host_only")
        if host_only is not None:
            reason = host_only.kwargs.get("reason") or (host_only.args[0] if host_only.args else "")
            item.add_marker(pytest.mark.skip(reason=f"host only under qemu-user emulation: {reason}"))
        elif item.get_closest_marker("system") is not None:
            item.add_marker(pytest.mark.skip(
                reason="system test under qemu-user emulation: the arm64 chroot has no cgroup "
                       "mounts and qemu-user does not emulate what runc needs"))


@pytest.fixture(scope="session")
def contract() -> Contract:
    """The contract TSV as message classes in a private descriptor pool (built once per run)."""
    return Contract()


@pytest.fixture
def contract_cm(contract: Contract) -> Iterator[ContractCM]:
    """A started plaintext CM on 127.0.0.1:<free port>, stopped after the test."""
    with ContractCM(contract) as cm:
        yield cm


@pytest.fixture
def contract_cm_factory(contract: Contract) -> Iterator[CMFactory]:
    """``make(port=0, credentials=None)`` starts a CM; every CM it made is stopped afterwards.

    For TLS CMs (``credentials=tls_material.server_credentials(...)``) and for restarting a CM
    on the same port (``make(port=old.port)`` after ``old.stop()``).
    """
    started: list[ContractCM] = []

    def make(*, port: int = 0, credentials: Optional[grpc.ServerCredentials] = None) -> ContractCM:
        cm = ContractCM(contract, port=port, credentials=credentials).start()
        started.append(cm)
        return cm

    yield make
    for cm in started:
        cm.stop()


@pytest.fixture
def tls_material(tmp_path: Path) -> TLSMaterial:
    """CA, CM server cert (127.0.0.1/localhost), SM client cert, and an unrelated CA + server."""
    if openssl_path() is None:
        pytest.skip("the openssl CLI is not installed; the test PKI is made with it")
    return make_tls_material(tmp_path / "tls")


# --- The machine's own network is never a test target (DEVELOPERS.md): network tests run in
# namespaces they create. This guard snapshots what an agent could change in the namespace pytest
# runs in (our nftables table, links, IPv4 forwarding) around every test and fails the test that
# changed it, so a test that forgets `"network": {"enabled": false}` is caught where it runs.

def _host_network() -> Optional[tuple]:
    if os.geteuid() != 0 or EMULATED:
        return None  # nothing an unprivileged or emulated run could change
    try:
        links = tuple(sorted(line.split(":", 1)[0].strip() for line in
                             Path("/proc/net/dev").read_text().splitlines()[2:]))
        forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    except OSError:
        return None
    return links, forwarding, _our_nft_tables()


def _our_nft_tables() -> tuple:
    global _nft
    if _nft is None:
        try:
            from aos_sm.agent.network.nft import Nft  # noqa: PLC0415 - only where nftables exists
            _nft = Nft()
        except Exception:  # no nftables here: nothing of ours can be in it either
            _nft = False
    if _nft is False:
        return ()
    try:
        listed = _nft.query("list tables")["nftables"]
    except Exception:
        return ()
    return tuple(sorted(f"{t['table']['family']} {t['table']['name']}" for t in listed
                        if "table" in t and t["table"]["name"].startswith("aos")))


_nft: object = None


@pytest.fixture(autouse=True)
def _machine_network_untouched() -> Iterator[None]:
    before = _host_network()
    yield
    after = _host_network()
    if before is not None and after is not None and after != before:
        pytest.fail(f"the test changed the machine's own network (links, ip_forward, nftables): "
                    f"before {before}, after {after}; run the agent in a test namespace or set "
                    f"network.enabled false")
