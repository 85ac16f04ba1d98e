"""The firewall scripts and the instance's host files, as text."""

from __future__ import annotations

from aos_sm.agent.network import firewall
from aos_sm.agent.network.hostfiles import instance_files
from aos_sm.agent.network.plan import Attachment, Network, Rule

NET = Network("net-a", "172.18.0.0/16", "172.18.0.1", 0)


def test_hosts_and_resolv_conf_follow_network_md() -> None:
    files = instance_files(ip="172.18.0.2", network_id="net-a", hostname="web", gateway="172.18.0.1",
                           dns_servers=["10.0.0.53"], resource_hosts=[("10.1.1.1", "db")])
    assert files.hosts.splitlines() == ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback",
                                        "172.18.0.2 net-a web", "10.1.1.1 db"]
    assert files.resolv_conf == "nameserver 172.18.0.1\nnameserver 10.0.0.53\n"
    assert instance_files().resolv_conf == ""


def test_an_instance_chain_allows_its_network_and_rules_then_drops_private_then_accepts() -> None:
    attachment = Attachment("ns", "i", "net-a", "172.18.0.2", rules=(Rule("172.19.0.5", "8080", "TCP"),))
    script = firewall.add_instance_script(attachment, NET).splitlines()
    out = [line for line in script if f"{attachment.chain}-out " in line and "add rule" in line]
    assert [line.split(f"{attachment.chain}-out ", 1)[1] for line in out] == [
        "ct state established,related accept", "ip daddr 172.18.0.0/16 accept",
        "ip daddr 172.19.0.5 tcp dport 8080 accept",
        "ip daddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 } drop", "accept"]
    assert all(line.split()[2:4] == ["inet", "aos-sm"] for line in script if line.startswith("add"))


def test_removal_deletes_masquerade_rules_by_handle_and_only_our_chains() -> None:
    script = firewall.remove_network_script(NET, [7, 9], present=True)
    assert "delete rule inet aos-sm postrouting handle 7" in script
    assert "delete rule inet aos-sm postrouting handle 9" in script
    assert "flush table" not in script and "delete table" not in script
