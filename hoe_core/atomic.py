"""Atomic writes: one file, or a whole folder published in one rename (torch-free).

    with staged_folder(target, replace=force) as tmp:   # .NAME.hoe-tmp-PID-XXXX beside target
        write files into tmp                            # an exception removes tmp, target untouched
    # on success: every file and the folder fsync'ed, usual umask permissions, then one rename
    # (an existing target is swapped out with RENAME_EXCHANGE where the OS has it, then removed)

    atomic_write_text(path, text) / atomic_write_bytes(path, data)   # same for one file

A process killed with SIGKILL cannot clean up: its temporary entries keep our naming
(`.NAME.hoe-tmp-PID-XXXX`, `.NAME.hoe-old-PID-XXXX`) and the next write in that folder removes those
whose process is gone (`clean_stale`). An old target moved aside whose replacement never landed is
put back instead of deleted, so no interruption loses the previous state.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import CheckpointError

log = logging.getLogger(__name__)

TMP, OLD = "tmp", "old"
_OURS = re.compile(r"^\.(?P<name>.+)\.hoe-(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
_RENAME_EXCHANGE = 2  # linux/fs.h


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sibling(target: Path, kind: str = TMP) -> Path:
    """A fresh name of our own beside `target`: .NAME.hoe-KIND-PID-XXXXXXXX."""
    return target.with_name(f".{target.name}.hoe-{kind}-{os.getpid()}-{secrets.token_hex(4)}")


# ---------------------------------------------------------------------------- files


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path`: temporary file beside it, fsync, usual permissions, rename, fsync the folder."""
    path = Path(path)
    clean_stale(path.parent)
    tmp = sibling(path)
    try:
        with open(tmp, "xb") as f:  # open() applies the umask: the usual permissions
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------- folders


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, replace: bool = False, create: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; publish it as `target` when the block ends without error.

    replace: an existing target is replaced (else CheckpointError before anything is written);
    create=False: the temporary path is not created, the block creates it (e.g. a writer that refuses
    existing folders); the block must leave a folder there.
    """
    target = Path(target)
    if target.exists() and not replace:
        raise CheckpointError(f"{target} exists; pass --force (force=True) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent)
    tmp = sibling(target)
    if create:
        tmp.mkdir()
    try:
        yield tmp
        if not tmp.is_dir():
            raise CheckpointError(f"nothing was written to publish as {target} (expected a folder at {tmp})")
        publish_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_folder(tmp: Path, target: Path) -> None:
    """Make the finished folder `tmp` (beside `target`) become `target` in one rename."""
    fix_permissions(tmp)
    fsync_tree(tmp)
    if not target.exists():
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp)  # now holds the old folder
    else:  # no RENAME_EXCHANGE here: move the old one aside (restored by clean_stale if we die between)
        old = sibling(target, OLD)
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a file we never modify in place (no copy of a large graph), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fix_permissions(folder: Path) -> None:
    """Folders 0777 and files 0666 less the umask (mkdtemp/mkstemp and some writers make 0700/0600)."""
    mask = umask()
    for root, _, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on folders
        log.debug("fsync(%s) failed: %s", folder, e)
    finally:
        os.close(fd)


def check_output(out: str | os.PathLike, inputs=(), force: bool = False) -> Path:
    """The resolved output folder, refused (CheckpointError) when it would lose data: it exists (unless
    `force`) or is not a folder, it is, contains or lies inside an input, or it holds the working folder."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output {out} exists and is not a folder; expected a folder path")
    if out.exists() and not force:
        raise CheckpointError(f"output folder {out} exists; pass --force (force=True) to replace it")
    for path in (Path(p).resolve() for p in inputs if p is not None):
        if path == out or out in path.parents or path in out.parents:
            relation = "is" if path == out else "contains" if out in path.parents else "lies inside"
            raise CheckpointError(f"output folder {out} {relation} the input {path}; expected an output "
                                  "apart from every input (replacing it would delete or change the input)")
    cwd = Path.cwd().resolve()
    if force and (cwd == out or out in cwd.parents):
        raise CheckpointError(f"output folder {out} holds the working folder {cwd}; expected a folder that "
                              "--force may replace")
    if out.parent == out:
        raise CheckpointError(f"output folder {out} is a filesystem root; expected a folder inside one")
    return out


# ---------------------------------------------------------------------------- stale entries


def clean_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove our temporary entries in `parent` whose process is gone; put back an old folder whose
    replacement never landed. Returns what was removed or restored."""
    parent, done = Path(parent), []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return done
    for entry in entries:
        m = _OURS.match(entry.name)
        if m is None or _alive(int(m["pid"])):
            continue
        original = parent / m["name"]
        if m["kind"] == OLD and not original.exists():
            log.warning("restoring %s from %s (an interrupted replacement)", original, entry.name)
            os.rename(entry, original)
        elif entry.is_dir() and not entry.is_symlink():
            log.info("removing stale temporary folder %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        done.append(entry)
    return done


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):  # not Linux/glibc
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")
