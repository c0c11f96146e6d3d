"""Build instruction samples from pairs: the one record format every task produces."""

from __future__ import annotations

from mmdata.core.keys import stable_hash
from mmdata.core.reasons import Reason
from mmdata.core.tasks import get_task
from mmdata.core.templates import MARKER, Template, choose_template, fill_template, markers_of
from mmdata.records import ContextEntry, ImageTextPair, InstructionSample


def make_sample(
    task: str,
    target: ImageTextPair,
    context: list[ContextEntry],
    values: dict[str, str],
    templates: list[Template],
    seed: int,
) -> InstructionSample:
    """Fill a template for `task` and assemble the sample.

    Every marker in the instruction has exactly one context entry, in order, and every entry is referred to.
    """
    spec = get_task(task)
    if len(context) != len(spec.roles):
        raise ValueError(f"task {task} needs {len(spec.roles)} context entries, got {len(context)}")
    for i, (entry, role) in enumerate(zip(context, spec.roles, strict=True), start=1):
        if entry.marker != f"[ref#{i}]" or entry.role != role:
            raise ValueError(
                f"context entry {i} is {entry.marker}/{entry.role}, expected [ref#{i}]/{role}"
            )
    source_keys = [target.key] + [k for c in context for k in c.source_keys if k != target.key]
    source_keys = list(dict.fromkeys(source_keys))
    template = choose_template(templates, seed, task, *source_keys)
    instruction = fill_template(template, values)
    if sorted(set(markers_of(instruction))) != sorted(spec.markers):
        # A caption that itself contains "[ref#N]" would break the marker contract.
        raise ValueError(f"instruction markers do not match task {task}: {instruction!r}")
    return InstructionSample(
        sample_id=stable_hash(task, str(seed), *source_keys),
        task=task,
        instruction=instruction,
        template_id=template.id,
        caption=values.get("caption", ""),
        target=target.image,
        target_format=target.format,
        target_width=target.width,
        target_height=target.height,
        target_source_key=target.key,
        context=context,
        source_keys=source_keys,
        metadata={"source": target.source, **({"url": target.url} if target.url else {})},
    )


def txt2img_sample(
    pair: ImageTextPair, templates: list[Template], seed: int
) -> InstructionSample | Reason:
    """A text-to-image sample: the caption in a template, the pair's image as target, no context."""
    if MARKER.search(pair.caption):
        return Reason(
            "caption_has_marker", "caption contains a [ref#N] marker, which would break the text"
        )
    return make_sample("txt2img", pair, [], {"caption": pair.caption}, templates, seed)
