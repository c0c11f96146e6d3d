"""Read and write `templates/<task>.yaml` files (the template contract) without losing anything.

A file is `{task, version, templates: [{id, text, status, source, provenance?, reasons?}]}` with an
optional header of `#` comment lines, which is kept when the file is rewritten. Writes go to a
temporary file that is renamed into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STATUSES = ("accepted", "candidate", "rejected")
SOURCES = ("seed", "llm", "manual")
FORMAT_VERSION = 1

DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"


def templates_dir(path: str | Path | None = None) -> Path:
    """The templates folder: an explicit path, `$MMDATA_TEMPLATES_DIR`, or the repository's."""
    if path is not None:
        return Path(path)
    env = os.environ.get("MMDATA_TEMPLATES_DIR")
    return Path(env) if env else DEFAULT_TEMPLATES_DIR


def template_id(task: str, text: str, source: str = "llm") -> str:
    """A deterministic id from the text: the same rephrasing always gets the same id."""
    digest = hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:10]
    return f"{task}-{source}-{digest}"


@dataclass
class TemplateEntry:
    id: str
    text: str
    status: str = "candidate"
    source: str = "llm"
    provenance: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemplateEntry:
        """An entry from its mapping; ValueError saying what is wrong with a hand-edited one."""
        known = {"id", "text", "status", "source", "provenance", "reasons"}
        if not isinstance(d, dict):
            raise ValueError(f"expected a mapping with id and text, got {d!r}")
        for name in ("id", "text"):
            if d.get(name) is None or isinstance(d[name], (dict, list)):
                raise ValueError(f"template {d.get('id')!r}: needs a {name!r} string")
        status = d.get("status", "candidate")
        if status not in STATUSES:
            raise ValueError(f"template {d.get('id')!r}: unknown status {status!r}")
        if not isinstance(d.get("provenance") or {}, dict):
            raise ValueError(f"template {d['id']!r}: provenance must be a mapping")
        if not isinstance(d.get("reasons") or [], list):
            raise ValueError(f"template {d['id']!r}: reasons must be a list")
        return cls(
            id=str(d["id"]),
            text=str(d["text"]),
            status=status,
            source=str(d.get("source", "llm")),
            provenance=d.get("provenance"),
            reasons=list(d.get("reasons") or []),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "text": _Quoted(self.text),
            "status": self.status,
            "source": self.source,
        }
        if self.provenance:
            d["provenance"] = self.provenance
        if self.reasons:
            d["reasons"] = list(self.reasons)
        d.update(self.extra)
        return d


@dataclass
class TemplateFile:
    task: str
    version: int = FORMAT_VERSION
    templates: list[TemplateEntry] = field(default_factory=list)
    header: str = ""
    path: Path | None = None

    def by_id(self) -> dict[str, TemplateEntry]:
        return {t.id: t for t in self.templates}

    def with_status(self, status: str) -> list[TemplateEntry]:
        return [t for t in self.templates if t.status == status]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for t in self.templates:
            out[t.status] += 1
        return out

    def add(self, entry: TemplateEntry) -> bool:
        """Append an entry unless one with the same id is there already; return whether added."""
        if entry.id in self.by_id():
            return False
        self.templates.append(entry)
        return True


def _default_header(task: str) -> str:
    return (
        f"# Instruction templates for the {task} task (see mmdata/core/tasks.py for the task's markers\n"
        '# and placeholders). Only templates with status "accepted" are used by the pipelines.\n'
        "# LLM-written entries carry provenance; review decisions are in templates/reviews/.\n"
    )


def task_path(task: str, directory: str | Path | None = None) -> Path:
    return templates_dir(directory) / f"{task}.yaml"


def load(task: str, directory: str | Path | None = None) -> TemplateFile:
    """Load a task's template file; a missing file gives an empty set (with a default header)."""
    path = task_path(task, directory)
    if not path.exists():
        return TemplateFile(task=task, header=_default_header(task), path=path)
    return load_path(path, expected_task=task)


def load_path(path: str | Path, expected_task: str | None = None) -> TemplateFile:
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    header_lines = []
    for line in raw.splitlines(keepends=True):
        if line.startswith("#"):
            header_lines.append(line)
        else:
            break
    try:
        data = yaml.load(raw, Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or "task" not in data:
        raise ValueError(f"{path}: not a template file (needs a mapping with 'task')")
    task = str(data["task"])
    if expected_task is not None and task != expected_task:
        raise ValueError(f"{path}: task is {task!r}, expected {expected_task!r}")
    raw_entries = data.get("templates") or []
    if not isinstance(raw_entries, list):
        raise ValueError(f"{path}: 'templates' must be a list")
    entries = []
    for i, d in enumerate(raw_entries):
        try:
            entries.append(TemplateEntry.from_dict(d))
        except ValueError as e:
            raise ValueError(f"{path}: entry {i + 1} of 'templates': {e}") from None
    try:
        version = int(data.get("version", FORMAT_VERSION))
    except (TypeError, ValueError):
        raise ValueError(f"{path}: version must be an integer, not {data['version']!r}") from None
    ids = [e.id for e in entries]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"{path}: duplicate template ids {sorted(dup)}")
    return TemplateFile(
        task=task,
        version=version,
        templates=entries,
        header="".join(header_lines),
        path=path,
    )


# libyaml's loader when present: files with a few hundred entries load ~10x faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(yaml.SafeDumper):
    """Indent list items under their key, as the hand-written files do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):  # noqa: D102
        return super().increase_indent(flow, False)


class _Quoted(str):
    """A template text: always written in double quotes, like the hand-written files."""


_Dumper.add_representer(
    _Quoted, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style='"')
)


def dumps(tf: TemplateFile) -> str:
    body = yaml.dump(
        {
            "task": tf.task,
            "version": tf.version,
            "templates": [t.to_dict() for t in tf.templates],
        },
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=10_000,
        default_flow_style=False,
    )
    return (tf.header or _default_header(tf.task)) + body


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` through a temporary file and a rename. The temporary file is created with mode 0666
    less the umask (what a plain `open` gives; `mkstemp` would make it private), and an existing file
    keeps its mode: template files are shared data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if path.exists():
            os.fchmod(fd, path.stat().st_mode & 0o777)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(tf: TemplateFile, path: str | Path | None = None) -> Path:
    target = Path(path) if path is not None else tf.path
    if target is None:
        raise ValueError("no path to save the template file to")
    atomic_write_text(target, dumps(tf))
    tf.path = target
    return target


class TemplateFileBusy(RuntimeError):
    """Another process is writing the same template file."""


def lock_path(path: str | Path) -> Path:
    """The lock file of a template file (see `writer_lock`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def writer_lock(path: str | Path) -> Iterator[None]:
    """One writer per template file at a time.

    `templates generate`, `validate` and `review` each load a task's file, change it and save it
    whole; two at once would silently drop one's changes (a review saved while a generate run is
    going is overwritten by the run's next save). They hold this lock (an advisory `flock` on
    `.<file>.lock` beside it) while they work; a second one fails at once with this error.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(path), "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise TemplateFileBusy(
                f"{path} is being changed by another mmdata templates command ({holder}); "
                "wait for it to finish and run this again"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
