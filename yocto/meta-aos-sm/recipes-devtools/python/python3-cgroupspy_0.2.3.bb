SUMMARY = "Python library for managing cgroups"
DESCRIPTION = "A pythonic view of the cgroup (v1) tree and its controllers' files, \
               used by aos-sm to read and set the cgroups of service instances."
HOMEPAGE = "https://github.com/cloudsigma/cgroupspy"
BUGTRACKER = "https://github.com/cloudsigma/cgroupspy/issues"
SECTION = "devel/python"
LICENSE = "BSD-3-Clause"
LIC_FILES_CHKSUM = "file://LICENSE;md5=490066fd7cfd35eabc44075bb71627d4"

# The sdist on PyPI (https://pypi.org/pypi/cgroupspy/json); the same file and digest as
# buildroot/package/python-cgroupspy/python-cgroupspy.hash (tests/test_yocto.py holds them equal).
SRC_URI[sha256sum] = "8ee941c7ab9234a0b17a81b0b26487f7f1031f78b7a24cdd8eed1b5fa5970496"

inherit pypi setuptools3

CVE_PRODUCT = "cgroupspy"

RDEPENDS:${PN} += "python3-logging"

BBCLASSEXTEND = "native nativesdk"
