"""The network manager: provider networks, a namespace per instance, DNS names, firewall rules,
traffic accounting and shaping (NETWORK.md). A pure planner decides; thin adapters talk netlink,
nftables and tc.

- ``plan.py`` (pure): records, operations with their undos, the planning functions;
  ``firewall.py`` and ``hostfiles.py`` (pure): the nftables scripts and an instance's
  ``/etc/hosts`` and ``/etc/resolv.conf``.
- ``instance.py``: what the launcher and the manager exchange (light, imported by the launcher).
- ``manager.py``: runs the plans, stores the state, adopts after a restart; its two entry points
  for network parameters (``set_networks``/``update_networks`` and ``attach``) are the port a
  pull source (NETWORK.md "next contract") would call.
- ``adapter.py``, ``rtnl.py``, ``namespaces.py``, ``nft.py``, ``prerequisites.py``, ``build.py``:
  the I/O; ``dns.py``, ``traffic.py``, ``shaping.py``: dnsmasq, accounting and tc.
"""
