"""Instruction templates: load the accepted ones, check them against the task, fill them.

A template file is `templates/<task>.yaml` with `task`, `version` and a list of `templates`, each
`{id, text, status, source, provenance?}`; only `status: accepted` templates are used. A template's text
must contain exactly the task's `[ref#N]` markers and `{placeholder}`s (mmdata/core/tasks.py).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmdata.core.keys import stable_index
from mmdata.core.tasks import TaskSpec, get_task

MARKER = re.compile(r"\[ref#(\d+)\]")


class TemplateError(ValueError):
    """A template file or template is malformed."""


@dataclass(frozen=True)
class Template:
    id: str
    task: str
    text: str


def default_templates_dir() -> Path:
    """`templates/` of the source tree, else the copy packaged inside mmdata."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "templates", here / "_templates"):
        if cand.is_dir():
            return cand
    raise TemplateError("no templates directory found; pass --templates_dir")


def _fields(text: str) -> list[tuple[str, str, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(text))
    except ValueError as e:
        raise TemplateError(f"bad braces in template {text!r}: {e}") from None


def placeholders_of(text: str) -> list[str]:
    """The `{name}` fields of a format string (raises TemplateError on bad braces)."""
    return [f for _, f, _, _ in _fields(text) if f is not None]


def markers_of(text: str) -> list[str]:
    return [f"[ref#{n}]" for n in MARKER.findall(text)]


def check_template(text: str, spec: TaskSpec) -> list[str]:
    """Problems that make a template unusable for a task (empty list: usable)."""
    problems: list[str] = []
    try:
        parsed = _fields(text)
    except TemplateError as e:
        return [str(e)]
    fields = [f for _, f, _, _ in parsed if f is not None]
    if any(not f.isidentifier() for f in fields):
        problems.append(f"placeholder must be a plain name: {fields}")
    # `{caption!r}` would insert the caption's repr (quoted), `{caption:>80}` pad it: a placeholder
    # is only ever `{name}`.
    if odd := [f for _, f, spec, conv in parsed if f is not None and (spec or conv)]:
        problems.append(f"placeholder with a conversion or format spec: {odd}")
    # `{{` / `}}` would put a literal brace in the instruction.
    if any("{" in literal or "}" in literal for literal, _, _, _ in parsed):
        problems.append("literal brace ({{ or }}) in the template")
    if repeated := sorted({f for f in fields if fields.count(f) > 1}):
        problems.append(f"placeholder(s) used more than once {repeated}")
    if any(not ch.isprintable() for ch in text):  # tabs, newlines, controls, zero-width
        problems.append("not one line of printable text (tab, newline or control character)")
    want = set(spec.placeholders)
    allowed = want | set(spec.optional_placeholders)
    if missing := sorted(want - set(fields)):
        problems.append(f"missing placeholder(s) {missing}")
    if unknown := sorted(set(fields) - allowed):
        problems.append(f"unknown placeholder(s) {unknown}")
    found = markers_of(text)
    if sorted(set(found)) != sorted(spec.markers):
        problems.append(f"markers {sorted(set(found))} != task markers {list(spec.markers)}")
    elif len(found) != len(set(found)):
        problems.append("a marker appears more than once")
    return problems


def load_templates(task: str, templates_dir: str | Path | None = None) -> list[Template]:
    """The accepted templates of a task, in file order; raises TemplateError if none or any is invalid."""
    spec = get_task(task)
    path = Path(templates_dir or default_templates_dir()) / f"{task}.yaml"
    if not path.is_file():
        raise TemplateError(f"no template file for task {task!r}: expected {path}")
    with open(path, encoding="utf-8") as f:
        try:
            doc = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise TemplateError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise TemplateError(f"{path}: expected a mapping with 'task' and 'templates'")
    if doc.get("task") != task:
        raise TemplateError(f"{path}: 'task' is {doc.get('task')!r}, expected {task!r}")
    out: list[Template] = []
    seen: set[str] = set()
    for i, t in enumerate(doc.get("templates") or []):
        if not isinstance(t, dict) or "id" not in t or not isinstance(t.get("text"), str):
            raise TemplateError(f"{path}: entry {i} needs 'id' and 'text' (a string)")
        if t["id"] in seen:
            raise TemplateError(f"{path}: duplicate template id {t['id']!r}")
        seen.add(t["id"])
        if t.get("status", "candidate") != "accepted":
            continue
        if problems := check_template(t["text"], spec):
            raise TemplateError(
                f"{path}: accepted template {t['id']!r} is invalid: {'; '.join(problems)}"
            )
        out.append(Template(id=str(t["id"]), task=task, text=str(t["text"])))
    if not out:
        raise TemplateError(f"{path}: no accepted templates for task {task!r}")
    return out


def choose_template(templates: list[Template], seed: int, *key_parts: str) -> Template:
    """Pick a template deterministically from the seed and the record's identity."""
    return templates[stable_index(len(templates), str(seed), *key_parts)]


def fill_template(template: Template, values: dict[str, str]) -> str:
    """Substitute the placeholders (values are inserted verbatim; braces inside values are safe)."""
    return template.text.format_map(values)
