"""Errors shared across mmdata."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path


class UnknownNameError(KeyError, ValueError):
    """An unknown name (task, model, weights, annotator). A KeyError for lookups, and a ValueError so
    the command line reports it as a one-line error instead of a traceback."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunnerUnavailableError(RuntimeError):
    """The Beam runner `--runner` names cannot run here: its Beam extras (e.g. apache-beam[gcp]), Java
    or its job server jar are missing. The message names the runner, what is missing and how to get
    it; the command line reports it as one line (exit 1)."""


# -- how errors are shown on the command line ----------------------------------------------------

# The C library's texts of the errnos a user meets with files, in the words the rest of mmdata uses.
_PLAIN_WORDS = {
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "the folder is not empty",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EXDEV: "cannot be moved to another file system",
    errno.EBUSY: "busy (in use)",
    errno.ETXTBSY: "busy (in use)",
}


def _file_in_the_way(path: str) -> str | None:
    """`path` itself, or the nearest of its parents, when that exists and is not a folder."""
    for p in (Path(path), *Path(path).parents):
        try:
            if p.is_dir():
                return None
            if p.exists() or p.is_symlink():
                return str(p)
        except OSError:
            return None
    return None


def folder_problem(path: str | Path) -> str | None:
    """Why `path` cannot be a folder (or be created as one): it, or one of its parents, is a file;
    None when it can (or when that is not known: an object-store URL)."""
    path = str(path)
    if "://" in path:
        return None
    blocker = _file_in_the_way(path)
    if blocker is None:
        return None
    if blocker == str(Path(path)):
        return "it is a file, not a folder"
    return f"a parent, {blocker}, is a file, not a folder"


def parent_folder_problem(path: str | Path) -> str | None:
    """Why no file can be written at `path`: one of its parents is a file; else None."""
    path = str(path)
    parent = os.path.dirname(path)
    if "://" in path or not parent:
        return None
    blocker = _file_in_the_way(parent)
    return None if blocker is None else f"a parent, {blocker}, is a file, not a folder"


def check_output_folder(path: str | Path, what: str = "output folder") -> None:
    """Raise NotADirectoryError (exit 2 on the command line) naming `path` when it cannot be a
    folder (see `folder_problem`): before a command does its work, not when it writes at the end."""
    if problem := folder_problem(path):
        raise NotADirectoryError(f"{what} {path}: {problem}")


def os_error_reason(e: OSError) -> str:
    """What is wrong, in plain words, without the `[Errno N]` code: `permission denied`, `a parent,
    out, is a file, not a folder`. An error raised with a message of mmdata's own: that message."""
    inner = _single_inner(e)
    if inner is not None:
        return os_error_reason(inner)
    if e.errno is None or e.strerror is None:
        return str(e)
    system = e.strerror == os.strerror(e.errno)  # not a message of mmdata's own
    if e.filename is not None and e.errno in (errno.ENOTDIR, errno.EEXIST):
        # makedirs of an output under a file: ENOTDIR for the path below it, EEXIST for the file
        problem = folder_problem(_name(e.filename))
        if problem is not None:
            return problem
    if not system:
        return e.strerror
    return _PLAIN_WORDS.get(e.errno, e.strerror[:1].lower() + e.strerror[1:])


def describe_os_error(e: OSError) -> str:
    """An OSError as one line that names its file(s) and says what is wrong in plain words, e.g.
    `out: it is a file, not a folder` for `[Errno 17] File exists: 'out'`, `out/sub: a parent, out,
    is a file, not a folder` for `[Errno 20] Not a directory: 'out/sub'`, `data/x.json: permission
    denied`. An error raised with a message only (mmdata's own, which names what it is about) is
    that message."""
    inner = _single_inner(e)
    if inner is not None:
        return describe_os_error(inner)
    reason = os_error_reason(e)
    if e.errno is None or e.strerror is None or e.filename is None:
        return reason
    name = _name(e.filename)
    if e.filename2 is not None:
        name = f"{name} -> {_name(e.filename2)}"
    return f"{name}: {reason}"


def _name(filename: object) -> str:
    return (
        os.fsdecode(filename) if isinstance(filename, str | bytes | os.PathLike) else str(filename)
    )


def _single_inner(e: OSError) -> OSError | None:
    """The one OSError inside Beam's BeamIOError (`exception_details`: input -> error), if one."""
    details = getattr(e, "exception_details", None)
    if isinstance(details, dict):
        inner = [v for v in details.values() if isinstance(v, OSError)]
        if len(inner) == 1 and len(details) == 1:
            return inner[0]
    return None


def error_text(e: BaseException) -> str:
    """The message of a user's error as the command line shows it (`describe_os_error` for an
    OSError, else its text)."""
    return describe_os_error(e) if isinstance(e, OSError) else str(e)


def print_error(command: str, message: str | BaseException) -> None:
    """Print a user's error as every subcommand does, one line on stderr:
    `mmdata <command>: error: <message>` (argparse's own usage errors look the same)."""
    text = error_text(message) if isinstance(message, BaseException) else message
    print(f"mmdata {command}: error: {text}", file=sys.stderr)
