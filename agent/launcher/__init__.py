"""The launcher: OCI images pulled by digest, bundles, an OCI runtime, and the instances CM wants.

Modules: ``blobs`` (content-addressed store and resumed downloads), ``image`` (manifests, configs
and the image store), ``layers`` (one layer unpacked in overlay form, tree digests), ``space``
(pure: evictions for space and the removal policy), ``gc`` (the store's sweep),
``bundle`` (pure: the OCI runtime spec of an instance), ``rootfs`` (pure: the plan of an
instance's overlay root) and ``mounts`` (its mount adapter), ``storage`` (storage directories and
state files on the host), ``runtime`` (the runc/crun adapter),
``plan`` (pure: what an UpdateInstances changes), ``lifecycle`` (pure: each instance's state
machine, one table), ``store`` (SQLite: desired instances, crashes, image use, the offline clock),
``output`` (instance output into the log format of ``agent/instancelog.py``), ``containers`` (the
blocking operations on images and containers) and ``launcher`` (the runner: the worker thread
that feeds the life cycles, carries out their effects and reports to CM), with its parts ``tasks``
(the bounded pools, the blocking tasks they run, the offline-TTL clock) and ``batches`` (the
worker's jobs, the batch bookkeeping and the statuses).
"""

from .launcher import Launcher
from .records import NullMonitor, container_id

__all__ = ["Launcher", "NullMonitor", "container_id"]
