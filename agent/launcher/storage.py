"""An instance's storage directory and state file on the host (INSTANCES.md "Storage and state").

CM sends both paths relative (``<item>/<subject>/<instance>`` and ``.../state.dat``); they are
joined to ``storageDir`` and ``stateDir``. A path that is empty after cleaning, absolute, climbs
with ``..``, or meets a symlink or a non-directory on the way is an ``invalidArgument``, and both
paths are checked before anything is created, so a refused start writes nothing. The walk goes
from directory descriptor to directory descriptor with ``O_NOFOLLOW``: a symlink swapped in
between the check and the creation is refused too, never followed. The base directories
themselves are the operator's and may be symlinks.

Created as the reference does: the storage directory 0755 and the state file 0600, owned by the
instance's uid:gid; the directories above them 0755, root's. What exists is left as it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Iterator, List, Tuple

from ..errors import Failed, InvalidArgument


def relative_parts(path: str, what: str) -> Tuple[str, ...]:
    """The components of a CM-sent relative path; InvalidArgument when it escapes its directory."""
    if path.startswith("/"):
        raise InvalidArgument(f"{what}: absolute, escapes its directory: {path[:40]!r}")
    parts = tuple(part for part in PurePosixPath(path).parts if part != ".")
    if ".." in parts:
        raise InvalidArgument(f"{what}: '..' escapes its directory: {path[:40]!r}")
    if not parts:
        raise InvalidArgument(f"{what}: names no entry: {path[:40]!r}")
    return parts


@contextlib.contextmanager
def _directory(base: Path, parts: Tuple[str, ...], what: str, create: bool) -> Iterator[int]:
    """A descriptor of ``base/parts`` walked without following symlinks (made 0755 when ``create``);
    -1 when a part is missing and not ``create``."""
    try:
        fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise
        yield -1
        return
    opened: List[int] = [fd]
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                fd = -1
                break
            except OSError as err:
                if err.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise InvalidArgument(f"{what}: {part!r} on the way is a symlink or not a directory") from err
                raise
            opened.append(fd)
        yield fd
    finally:
        for each in opened:
            os.close(each)


def _check_last(parent: int, name: str, what: str, want_dir: bool) -> None:
    if parent < 0:
        return
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise InvalidArgument(f"{what}: is a symlink")
    if stat.S_ISDIR(info.st_mode) != want_dir:
        raise InvalidArgument(f"{what}: exists and is not a {'directory' if want_dir else 'regular file'}")


def check(base: Path, path: str, what: str, want_dir: bool) -> Tuple[str, ...]:
    """Refuse ``path`` below ``base`` as the start would; creates nothing."""
    parts = relative_parts(path, what)
    with _directory(base, parts[:-1], what, create=False) as parent:
        _check_last(parent, parts[-1], what, want_dir)
    return parts


def _own(fd: int, uid: int, gid: int, mode: int) -> None:
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


def _open_last(parent: int, name: str, want_dir: bool) -> Tuple[int, bool]:
    """(fd, created) of the last part: made 0700 / 0600 when missing (``_own`` sets the final
    mode once it is owned), opened without following a symlink swapped in meanwhile."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    if want_dir:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            created = True
        except FileExistsError:
            created = False
        return os.open(name, flags | os.O_DIRECTORY, dir_fd=parent), created
    try:
        return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=parent), True
    except FileExistsError:
        return os.open(name, flags, dir_fd=parent), False


def _create(base: Path, parts: Tuple[str, ...], uid: int, gid: int, what: str, want_dir: bool) -> Path:
    kind = "storage directory" if want_dir else "state file"
    try:
        base.mkdir(parents=True, exist_ok=True)
        with _directory(base, parts[:-1], what, create=True) as parent:
            _check_last(parent, parts[-1], what, want_dir=want_dir)
            fd, created = _open_last(parent, parts[-1], want_dir)
            try:
                if created:
                    _own(fd, uid, gid, 0o755 if want_dir else 0o600)
            finally:
                os.close(fd)
    except InvalidArgument:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symlink swapped in between the check and the open
            raise InvalidArgument(f"{what}: is a symlink") from err
        raise Failed(f"cannot create the {kind}: {err}") from err
    return base.joinpath(*parts)


def create_storage(base: Path, parts: Tuple[str, ...], uid: int, gid: int) -> Path:
    """The storage directory, made 0755 and owned by uid:gid when missing."""
    return _create(base, parts, uid, gid, "storage_path", want_dir=True)


def create_state(base: Path, parts: Tuple[str, ...], uid: int, gid: int) -> Path:
    """The state file, made 0600 and owned by uid:gid when missing."""
    return _create(base, parts, uid, gid, "state_path", want_dir=False)
