"""The launcher's durable state in one SQLite file in the working dir.

- ``instances``: the instances CM wants on this node (the InstanceInfo as CM sent it) and the
  container each runs as. This is what the agent brings back after a restart or a reboot, before
  any CM connects (offline autonomy).
- ``crashes``: runs that ended on their own, for InstanceCrashLogRequest after a restart too.
- ``images``: when each image was last used, for garbage collection after ``imageTTL``.
- ``offline``: since when the cloud has been away (wall seconds), so that the offline TTL clock
  survives an agent restart (INSTANCES.md "Running and watching").

Every change is one transaction (sqlite3's context manager commits or rolls back), so a power cut
leaves the previous state or the new one. A file SQLite cannot read (corrupt, not a database) is
moved aside and a fresh store started; ``problem`` says what happened so the launcher can tell CM
in a CoreAlert instead of crashing the agent. Any other SQLite error (disk full, I/O error, a
locked file) is raised as :class:`StoreError`, a ``failed`` the launcher reports like any other.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from google.protobuf.message import DecodeError

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..errors import Failed
from ..ports import CrashRecord, InstanceKey

log = logging.getLogger(__name__)

MAX_CRASHES_PER_INSTANCE = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    item_id TEXT NOT NULL, subject_id TEXT NOT NULL, instance INTEGER NOT NULL, type INTEGER NOT NULL,
    info BLOB NOT NULL, container_id TEXT NOT NULL,
    PRIMARY KEY (item_id, subject_id, instance, type));
CREATE TABLE IF NOT EXISTS crashes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL, subject_id TEXT NOT NULL, instance INTEGER NOT NULL, type INTEGER NOT NULL,
    log_path TEXT NOT NULL, started_at TEXT NOT NULL, crashed_at TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (digest TEXT PRIMARY KEY, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS offline (id INTEGER PRIMARY KEY CHECK (id = 0), since REAL);
"""

_KEY_WHERE = "item_id = ? AND subject_id = ? AND instance = ? AND type = ?"


class StoreError(Failed):
    """The launcher's SQLite store failed (disk full, I/O error); the message says which step."""


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as err:
        raise StoreError(f"launcher store: {what}: {err}") from err


def _key_values(key: InstanceKey) -> Tuple[str, str, int, int]:
    return (key.item_id, key.subject_id, key.instance, key.type)


class LauncherStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: Optional[str] = None
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as err:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.replace(aside)
            self.problem = (f"launcher store {path} unreadable ({err}); moved to {aside.name} and started "
                            "empty: instances CM wants must be sent again")
            log.error("%s", self.problem)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            result = db.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result[0] if result else 'no answer'}")
            with db:
                db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- desired instances

    def instances(self) -> Dict[InstanceKey, Tuple[sm_pb2.InstanceInfo, str]]:
        with _translated("reading instances"), self._lock:
            rows = self._db.execute(
                "SELECT item_id, subject_id, instance, type, info, container_id FROM instances ORDER BY rowid"
            ).fetchall()
        result: Dict[InstanceKey, Tuple[sm_pb2.InstanceInfo, str]] = {}
        for item_id, subject_id, instance, kind, blob, container_id in rows:
            info = sm_pb2.InstanceInfo()
            try:
                info.ParseFromString(blob)
            except DecodeError as err:
                # One damaged row costs that instance (CM can send it again), not the agent.
                log.error("launcher store: instance %s/%s/%s unreadable (%s): skipped", item_id, subject_id,
                          instance, err)
                continue
            result[InstanceKey(item_id, subject_id, instance, kind)] = (info, container_id)
        return result

    def put_instance(self, key: InstanceKey, info: sm_pb2.InstanceInfo, container_id: str) -> None:
        self.put_instances([(key, info, container_id)])

    def put_instances(self, rows: Sequence[Tuple[InstanceKey, sm_pb2.InstanceInfo, str]]) -> None:
        """Remember every instance of a batch in one transaction: one fsync, all or none."""
        with _translated("saving instances"), self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                [(*_key_values(key), info.SerializeToString(deterministic=True), container_id)
                 for key, info, container_id in rows],
            )

    def remove_instance(self, key: InstanceKey) -> None:
        with _translated("forgetting an instance"), self._lock, self._db:
            self._db.execute(f"DELETE FROM instances WHERE {_KEY_WHERE}", _key_values(key))

    # --- crashes

    def add_crash(self, record: CrashRecord) -> None:
        values = _key_values(record.key)
        with _translated("saving a crash record"), self._lock, self._db:
            self._db.execute(
                "INSERT INTO crashes (item_id, subject_id, instance, type, log_path, started_at, crashed_at, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, str(record.log_path), record.started_at.isoformat(), record.crashed_at.isoformat(),
                 record.reason),
            )
            self._db.execute(
                f"DELETE FROM crashes WHERE {_KEY_WHERE} AND id NOT IN (SELECT id FROM crashes WHERE {_KEY_WHERE}"
                " ORDER BY id DESC LIMIT ?)",
                (*values, *values, MAX_CRASHES_PER_INSTANCE),
            )

    def crashes(self) -> List[CrashRecord]:
        with _translated("reading crash records"), self._lock:
            rows = self._db.execute(
                "SELECT item_id, subject_id, instance, type, log_path, started_at, crashed_at, reason"
                " FROM crashes ORDER BY id"
            ).fetchall()
        return [
            CrashRecord(InstanceKey(item_id, subject_id, instance, kind), Path(log_path),
                        _utc(started_at), _utc(crashed_at), reason)
            for item_id, subject_id, instance, kind, log_path, started_at, crashed_at, reason in rows
        ]

    # --- image use

    def touch_image(self, digest: str, now: float) -> None:
        with _translated("recording image use"), self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO images VALUES (?, ?)", (digest, now))

    def image_use(self) -> Dict[str, float]:
        with _translated("reading image use"), self._lock:
            return dict(self._db.execute("SELECT digest, last_used FROM images").fetchall())

    def forget_image(self, digest: str) -> None:
        with _translated("forgetting an image"), self._lock, self._db:
            self._db.execute("DELETE FROM images WHERE digest = ?", (digest,))

    # --- the offline TTL clock

    def offline_since(self) -> Optional[float]:
        """Since when the cloud has been away (wall seconds); None if connected or never recorded."""
        with _translated("reading the offline clock"), self._lock:
            row = self._db.execute("SELECT since FROM offline WHERE id = 0").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def set_offline_since(self, since: Optional[float]) -> None:
        with _translated("saving the offline clock"), self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO offline VALUES (0, ?)", (since,))


def _utc(text: str) -> datetime:
    stamp = datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
