################################################################################
#
# python-cgroupspy
#
################################################################################

PYTHON_CGROUPSPY_VERSION = 0.2.3
PYTHON_CGROUPSPY_SOURCE = cgroupspy-$(PYTHON_CGROUPSPY_VERSION).tar.gz
PYTHON_CGROUPSPY_SITE = https://files.pythonhosted.org/packages/source/c/cgroupspy
PYTHON_CGROUPSPY_SETUP_TYPE = setuptools
PYTHON_CGROUPSPY_LICENSE = BSD-3-Clause
PYTHON_CGROUPSPY_LICENSE_FILES = LICENSE

$(eval $(python-package))
