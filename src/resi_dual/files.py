"""Files that appear complete or not at all, and filesystem errors as one line.

Every output file of every command is written to a temporary sibling and renamed over its final
name (:func:`atomic_write`, :func:`atomic_path`): a crash, a full disk or a file-size limit leaves
the previous file (or none), never half of one. Temporaries are named ``.<name>.tmp-<pid>[.<ext>]``
so a later run can tell a dead writer's leftovers from a live one's (:func:`tmp_owner`).
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from resi_dual.errors import ResiDualError

_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)(\.[A-Za-z0-9]+)?$")


def tmp_name(path: Path) -> Path:
    """The temporary sibling ``path`` is written to before its atomic rename (keeps the extension
    last, so writers that pick a format from it — matplotlib, pandas — still do)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


def is_tmp(path: Path) -> bool:
    """True for a temporary written by :func:`tmp_name` (by any process)."""
    return bool(_TMP_RE.match(Path(path).name))


def tmp_owner(path: Path) -> int | None:
    """The pid of the process that wrote temporary ``path`` (None if it is not one)."""
    m = _TMP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists on this machine (signal 0 probes without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it is given the umask's
    permissions (libraries such as safetensors create 0600 files) and renamed over ``path``; on any
    error it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):  # a failed write names no file: name ours
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` so that a reader (or a rerun after a crash) sees all or nothing."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
    return path


def remove_dead_temporaries(folder: str | Path) -> None:
    """Delete the temporaries in ``folder`` (not below it) whose writer is no longer running: what a
    killed run left. A live writer's are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if is_tmp(p) and p.is_file() and not pid_alive(tmp_owner(p) or 0):
            p.unlink(missing_ok=True)


def check_out_dir(path: str | Path, what: str = "--out") -> Path:
    """A one-line error if a file stands where output directory ``path`` or one of its parents goes
    (checked before a long run; nothing is created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ResiDualError(f"{what} {path} is a file, not a directory")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ResiDualError(f"{what} {path}: {parent} is a file, not a directory")
        if parent.exists():
            break
    return path


def ensure_out_dir(path: str | Path, what: str = "--out") -> Path:
    """Create the output directory ``path`` (and parents), clearing dead writers' temporaries in it;
    one-line errors for a file in the way."""
    path = check_out_dir(path, what)
    path.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    return path


_REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file is larger than allowed (file-size limit, ulimit -f)",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted"}


def os_error_line(e: OSError) -> str:
    """One line for a filesystem error: what failed, on which path, and why in plain words."""
    reason = _REASONS.get(e.errno or -1) or e.strerror or str(e) or type(e).__name__
    where = e.filename if e.filename is not None else None
    if isinstance(e, FileExistsError) and where:
        return f"{where} already exists"
    if isinstance(e, IsADirectoryError) and where:
        return f"{where} is a directory, not a file"
    if isinstance(e, NotADirectoryError) and where:
        return f"{where}: a part of this path is a file, not a directory"
    if where:
        verb = "write" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) else "access"
        return f"cannot {verb} {where}: {reason}"
    return f"filesystem error: {reason}"


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a user's file; ResiDualError naming ``what`` and the file when it is
    missing, a folder, or binary (a NUL byte or invalid UTF-8)."""
    p = Path(path)
    if not p.is_file():
        raise ResiDualError(f"no {what} file at {p}")
    data = p.read_bytes()
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\x00"), data.index(b"\x00") + 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResiDualError(f"the {what} file {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_safetensors(path: str | Path, what: str, hint: str = "") -> tuple[dict[str, str], dict]:
    """(header metadata, {name: tensor}) of a safetensors file; ResiDualError naming ``what`` and the
    file when it is missing or not readable as safetensors (``hint`` is appended: how to rewrite it)."""
    p = Path(path)
    if not p.is_file():
        raise ResiDualError(f"no {what} file at {p}")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for other files
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ResiDualError(f"{p} is not a readable {what} file (not a safetensors file: {reason}){hint}") from None
