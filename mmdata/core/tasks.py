"""The task registry: which markers and placeholders each task's instruction templates carry.

Every task of the recipe shares one record format (an instruction sample); a task only fixes the
context roles, the `[ref#N]` markers its payload text must contain, and the `{placeholders}` filled
from the record. Templates for a task live in `templates/<task>.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmdata.errors import UnknownNameError


@dataclass(frozen=True)
class TaskSpec:
    """What a task's templates must contain.

    Attributes:
        name: task id, also the template file stem.
        group: the recipe's task group (Txt2Img, Control2Img, ...).
        roles: context role of each marker, in marker order: roles[i] belongs to `[ref#{i+1}]`.
        placeholders: `{name}` fields every template must use, filled from the record.
        description: one line for prompts and docs.
    """

    name: str
    group: str
    roles: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()
    description: str = ""
    optional_placeholders: tuple[str, ...] = field(default=())

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(f"[ref#{i + 1}]" for i in range(len(self.roles)))


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("txt2img", "Txt2Img", (), ("caption",), "generate an image from a caption"),
        TaskSpec(
            "retrieval",
            "Stage1",
            ("neighbour", "neighbour", "neighbour"),
            ("caption",),
            "generate an image from a caption using three related images as context",
        ),
        TaskSpec("edge2img", "Control2Img", ("edge",), ("caption",), "follow an edge map"),
        TaskSpec("depth2img", "Control2Img", ("depth",), ("caption",), "follow a depth map"),
        TaskSpec("mask2img", "Control2Img", ("mask",), ("caption",), "follow a mask"),
        TaskSpec(
            "subject2img",
            "SubjectTxt2Img",
            ("subject", "subject", "subject"),
            ("caption", "subject"),
            "generate the subject shown in the reference images",
        ),
        TaskSpec("style2img", "StyleTxt2Img", ("style",), ("caption",), "caption in a given style"),
        TaskSpec(
            "style_transfer",
            "StyleTransfer",
            ("content", "style"),
            (),
            "redraw a content image in the style of a style image",
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """Return the spec of a task, or raise a KeyError naming the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None
