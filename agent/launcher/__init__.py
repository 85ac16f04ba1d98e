"""The launcher: OCI images pulled by digest, bundles, an OCI runtime, and the instances CM wants.

Modules: ``blobs`` (content-addressed store and downloads), ``image`` (manifests, layers, rootfs),
``bundle`` (pure: the OCI runtime spec of an instance), ``runtime`` (the runc/crun adapter),
``plan`` (pure: what an UpdateInstances changes), ``store`` (SQLite: desired instances, crashes,
image use), ``output`` (instance output into the log format of ``agent/instancelog.py``) and
``launcher`` (the worker thread that runs batches and reports to CM).
"""

from .launcher import Launcher
from .records import NullMonitor, container_id

__all__ = ["Launcher", "NullMonitor", "container_id"]
