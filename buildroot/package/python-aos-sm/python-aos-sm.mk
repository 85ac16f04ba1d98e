################################################################################
#
# python-aos-sm
#
################################################################################

# Equal to the version in pyproject.toml (tests/test_buildroot.py holds it there).
PYTHON_AOS_SM_VERSION = 0.1.0
# Built from the checkout this br2-external tree lives in, so an image always carries
# the agent it was built next to, with no release tarball to publish and hash first.
PYTHON_AOS_SM_SITE = $(BR2_EXTERNAL_AOS_SM_PATH)/..
PYTHON_AOS_SM_SITE_METHOD = local
# What the wheel does not need: virtualenvs, caches, tests and this tree.
PYTHON_AOS_SM_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /.venv --exclude /.cache --exclude /build --exclude /dist \
	--exclude /buildroot --exclude /tests --exclude /bench \
	--exclude '*.egg-info' --exclude __pycache__
PYTHON_AOS_SM_SETUP_TYPE = setuptools
PYTHON_AOS_SM_LICENSE = Apache-2.0

# The files an image installs live in packaging/, shared with other distributions.
# An overlay's /etc/aos/aos_servicemanager.cfg replaces the default one.
define PYTHON_AOS_SM_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(@D)/packaging/aos_servicemanager.cfg \
		$(TARGET_DIR)/etc/aos/aos_servicemanager.cfg
endef
PYTHON_AOS_SM_POST_INSTALL_TARGET_HOOKS += PYTHON_AOS_SM_INSTALL_CONFIG

define PYTHON_AOS_SM_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(@D)/packaging/S95aos-sm \
		$(TARGET_DIR)/etc/init.d/S95aos-sm
endef

define PYTHON_AOS_SM_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/packaging/aos-sm.service \
		$(TARGET_DIR)/usr/lib/systemd/system/aos-sm.service
endef

$(eval $(python-package))
