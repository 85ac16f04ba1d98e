# aos-sm's kernel options (namespaces, cgroups, overlayfs, bridge/veth/VLAN, nftables, tc) as a
# configuration fragment, merged by kernel-yocto like any .cfg in SRC_URI. Only where the distro
# asks for them with DISTRO_FEATURES "aos-sm" (the df-aos-sm override, conf/layer.conf): adding
# the layer alone must not change a kernel (the Yocto Project Compatible rules).
FILESEXTRAPATHS:prepend:df-aos-sm := "${THISDIR}/linux-yocto:"

SRC_URI:append:df-aos-sm = " file://aos-sm.cfg"
