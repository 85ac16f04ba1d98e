SUMMARY = "AosEdge Service Manager (aos-sm)"
DESCRIPTION = "The Service Manager agent of AosEdge nodes: keeps the servicemanager v5 \
               gRPC stream to the unit's Communication Manager, runs service instances \
               with runc and builds their networks."
HOMEPAGE = "https://github.com/aosedge"
BUGTRACKER = "https://github.com/aosedge"
SECTION = "console/utils"
CVE_PRODUCT = "aos-sm"
LICENSE = "Apache-2.0"
# The checkout has no license file of its own: pyproject.toml's license line states it.
LIC_FILES_CHKSUM = "file://pyproject.toml;beginline=11;endline=11;md5=3358005787c442581bead91c71afa94f"

# Built from the checkout this layer lives in (yocto/meta-aos-sm/recipes-core/aos-sm/ is four
# levels down), the way devtool builds a local tree: an image always carries the agent it was
# built next to, with no release tarball to publish and hash first, and bitbake rebuilds it when
# the tree changes. The build writes build/ and aos_sm.egg-info/ there, as `pip install .` does;
# no oe-workdir/oe-logs links are left in it.
# Nothing is fetched: an empty SRC_URI says so (oelint-adv wants one set).
SRC_URI = ""
inherit externalsrc
# Expanded at once (:=): THISDIR names the file being parsed, a bbappend's directory later.
EXTERNALSRC := "${@os.path.abspath(os.path.join(d.getVar('THISDIR'), '..', '..', '..', '..'))}"
# externalsrc.bbclass's variable, which oelint-adv does not know.
# nooelint: oelint.vars.mispell.unknown
EXTERNALSRC_SYMLINKS = ""

# pyproject.toml only (no setup.py), built with setuptools' PEP 517 backend.
inherit python_setuptools_build_meta systemd update-rc.d

# python_setuptools_build_meta empties ${S}/build before each build (stale modules there would
# end up in the wheel: setuptools issue 4732), but externalsrc drops cleandirs inside the tree.
do_configure:prepend() {
    rm -rf ${S}/build
}

# The files an image installs live in packaging/, shared with the Buildroot package; the wheel
# brings /usr/bin/aos-sm (the entry point). Both start files are installed: systemd.bbclass
# keeps the unit where DISTRO_FEATURES has systemd and the init script where it has not.
do_install:append() {
    install -D -m 0644 ${S}/packaging/aos_servicemanager.cfg ${D}${sysconfdir}/aos/aos_servicemanager.cfg
    install -D -m 0644 ${S}/packaging/aos-sm.service ${D}${systemd_system_unitdir}/aos-sm.service
    install -D -m 0755 ${S}/packaging/S95aos-sm ${D}${INIT_D_DIR}/aos-sm
}

SYSTEMD_SERVICE:${PN} = "aos-sm.service"

# Started late and stopped early, as Buildroot's S95aos-sm.
INITSCRIPT_NAME = "aos-sm"
INITSCRIPT_PARAMS = "defaults 95 5"

# A board adapts the configuration (CM's address, certificates): an upgrade keeps its copy.
CONFFILES:${PN} = "${sysconfdir}/aos/aos_servicemanager.cfg"

# pyproject.toml's dependencies (python3-cgroupspy is this layer's); runc starts the instances;
# the network manager loads libnftables (package nftables) and runs one dnsmasq per network
# (NETWORK.md). The rest are the standard library modules the agent imports beyond python3-core,
# by their package in oe-core's python3-manifest.json. tests/test_yocto.py keeps the list
# complete and matched with the Buildroot package's selects.
RDEPENDS:${PN} += "\
    dnsmasq \
    nftables \
    python3-asyncio \
    python3-cgroupspy \
    python3-compression \
    python3-crypt \
    python3-cryptography \
    python3-ctypes \
    python3-datetime \
    python3-difflib \
    python3-grpcio \
    python3-io \
    python3-json \
    python3-logging \
    python3-math \
    python3-netclient \
    python3-numbers \
    python3-protobuf \
    python3-psutil \
    python3-pyroute2 \
    python3-sqlite3 \
    python3-threading \
    python3-transitions \
    virtual-runc \
"
