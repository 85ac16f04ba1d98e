"""The network manager: provider networks, a namespace per instance, DNS names, firewall rules,
traffic accounting and shaping (NETWORK.md). A pure planner decides; thin adapters talk netlink,
nftables and tc."""
