"""Speed limits of an instance (item config ``downloadSpeed`` / ``uploadSpeed``, kbit/s) with tc.

NETWORK.md, "Traffic accounting and limits" (v9.1.1 bandwidth.cpp): a token bucket (tbf) with a
burst of 12800 bytes and a queue limit of 4 bursts.

- Download is traffic towards the instance: it leaves the host through the host end of the
  instance's veth, so a tbf as that device's root qdisc paces it.
- Upload arrives on the host end (ingress), where a qdisc cannot queue. An ingress qdisc with a
  catch-all u32 filter redirects every packet (mirred) to an ifb device, whose egress tbf paces
  it. The ifb is named ``ifb-<8 hex of the veth name>`` (12 bytes, under IFNAMSIZ 16), so it is
  found again from the veth alone and recognised as ours by its prefix.

pyroute2 is imported inside the functions: importing it costs about 13 MiB and 85 ms, paid only
on nodes that shape. The calls used (``IPRoute.link``/``tc`` with keyword arguments) are the same
in pyroute2 0.7 (Debian bookworm) and 0.9. Netlink sockets are opened per call in the calling
thread's network namespace.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import logging
from typing import Any, Iterable, Optional, Set, Tuple

from ..errors import InvalidArgument, NotFound, RuntimeFailure

log = logging.getLogger(__name__)

BURST_BYTES = 12800
LIMIT_BYTES = 4 * BURST_BYTES
IFB_PREFIX = "ifb-"
_ROOT_HANDLE = 0x10000  # 1:0
_INGRESS_HANDLE = 0xFFFF0000  # ffff:0
_ETH_P_ALL = 0x0003  # <linux/if_ether.h>: the filter sees every protocol, not only IPv4


def ifb_name(host_veth: str) -> str:
    """The ifb device that carries ``host_veth``'s upload (deterministic, ≤ 15 bytes)."""
    return IFB_PREFIX + hashlib.sha256(host_veth.encode()).hexdigest()[:8]


def _rate_bytes_per_second(kbit: int, key: str) -> int:
    if kbit <= 0:
        raise InvalidArgument(f"item config quotas.{key}: {kbit} kbit/s is not a speed")
    return kbit * 1000 // 8  # tc's "kbit" is 1000 bits (tc(8), "RATES")


def _netlink_code(err: BaseException) -> Optional[int]:
    code = getattr(err, "code", None)
    return code if isinstance(code, int) else None


def shape(host_veth: str, download_kbit: Optional[int], upload_kbit: Optional[int]) -> None:
    """Limit the speeds of the instance behind ``host_veth`` (None: that direction unlimited).

    Replaces whatever shaping the veth had, so it also applies a changed item config."""
    IPRoute, NetlinkError = _pyroute2()
    download_rate = _rate_bytes_per_second(download_kbit, "downloadSpeed") if download_kbit else None
    upload_rate = _rate_bytes_per_second(upload_kbit, "uploadSpeed") if upload_kbit else None
    unshape(host_veth)
    if download_rate is None and upload_rate is None:
        return
    ifb = ifb_name(host_veth)
    try:
        with IPRoute() as ipr:
            index = _index(ipr, host_veth)
            if download_rate is not None:
                _add_tbf(ipr, index, download_rate)
            if upload_rate is not None:
                ipr.link("add", ifname=ifb, kind="ifb")
                ifb_index = _index(ipr, ifb)
                ipr.link("set", index=ifb_index, state="up")
                _add_tbf(ipr, ifb_index, upload_rate)
                ipr.tc("add", "ingress", index=index, handle=_INGRESS_HANDLE)
                ipr.tc("add-filter", "u32", index=index, handle=0, parent=_INGRESS_HANDLE,
                       protocol=_ETH_P_ALL, target=_ROOT_HANDLE, keys=["0x0/0x0+0"],
                       action={"kind": "mirred", "direction": "egress", "action": "redirect",
                               "ifindex": ifb_index})
    except NetlinkError as err:
        unshape(host_veth)  # nothing half-applied stays behind
        raise RuntimeFailure(f"shaping {host_veth}: {err}", exit_code=_netlink_code(err) or 0) from err
    log.info("shaping %s: download %s kbit/s, upload %s kbit/s", host_veth,
             download_kbit or "unlimited", upload_kbit or "unlimited")


def unshape(host_veth: str) -> None:
    """Remove the speed limits of ``host_veth`` and its ifb; what is already gone is fine (the
    veth may have gone with its namespace)."""
    IPRoute, NetlinkError = _pyroute2()
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=host_veth)
        if indexes:
            for handle, kind in ((_ROOT_HANDLE, "tbf"), (_INGRESS_HANDLE, "ingress")):
                try:
                    if kind == "ingress":
                        ipr.tc("del", "ingress", index=indexes[0], handle=handle)
                    else:
                        ipr.tc("del", index=indexes[0], handle=handle, parent=0xFFFFFFFF)
                except NetlinkError as err:
                    # ENOENT / EINVAL: no such qdisc, the state we want.
                    if _netlink_code(err) not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                        raise RuntimeFailure(f"unshaping {host_veth}: {err}") from err
        _delete_link(ipr, ifb_name(host_veth), NetlinkError)


def remove_stray_ifbs(keep_host_veths: Iterable[str]) -> Set[str]:
    """At agent start: delete every ``ifb-*`` device that belongs to none of ``keep_host_veths``
    (its instance is gone); returns the names deleted."""
    IPRoute, NetlinkError = _pyroute2()
    wanted = {ifb_name(veth) for veth in keep_host_veths}
    removed: Set[str] = set()
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if isinstance(name, str) and name.startswith(IFB_PREFIX) and kind == "ifb" and name not in wanted:
                _delete_link(ipr, name, NetlinkError)
                removed.add(name)
    return removed


def _pyroute2() -> Tuple[Any, Any]:
    """IPRoute and NetlinkError, imported on first use (see the module docstring); pyroute2 has
    no type information, so they are Any."""
    iproute = importlib.import_module("pyroute2").IPRoute
    netlink_error = importlib.import_module("pyroute2.netlink.exceptions").NetlinkError
    return iproute, netlink_error


def _index(ipr: Any, ifname: str) -> int:
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        raise NotFound(f"shaping: no device {ifname}")
    return int(indexes[0])


def _add_tbf(ipr: Any, index: int, rate: int) -> None:
    ipr.tc("add", "tbf", index=index, handle=_ROOT_HANDLE, rate=rate, burst=BURST_BYTES,
           limit=LIMIT_BYTES)


def _delete_link(ipr: Any, ifname: str, netlink_error: Any) -> None:
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        return
    try:
        ipr.link("del", index=indexes[0])
    except netlink_error as err:
        if _netlink_code(err) not in (errno.ENODEV, errno.ENOENT):
            raise RuntimeFailure(f"deleting {ifname}: {err}") from err
