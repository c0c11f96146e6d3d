"""Build instruction samples from pairs: the one record format every task produces."""

from __future__ import annotations

import dataclasses
import re

from mmdata.core.keys import stable_hash
from mmdata.core.reasons import Reason
from mmdata.core.tasks import get_task
from mmdata.core.templates import MARKER, Template, choose_template, fill_template, markers_of
from mmdata.records import ContextEntry, ImageTextPair, InstructionSample

# A placeholder directly followed by sentence-ending punctuation in a template ("Draw {caption}.").
_PLACEHOLDER_THEN_STOP = re.compile(r"(\{([A-Za-z_]\w*)\})([.!?])")
_STOPS = (".", "!", "?", "\u2026", "\u3002")  # . ! ? … 。


def fill_instruction(template: Template, values: dict[str, str]) -> str:
    """Fill `template`; where the template ends a sentence right after a value that already ends one
    ("Draw {caption}." with "A red apple."), the template's stop is left out ("A red apple.." otherwise)."""

    def stop(m: re.Match) -> str:
        value = values.get(m.group(2))
        return (
            m.group(1) if isinstance(value, str) and value.rstrip().endswith(_STOPS) else m.group(0)
        )

    text = _PLACEHOLDER_THEN_STOP.sub(stop, template.text)
    return fill_template(dataclasses.replace(template, text=text), values)


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
    The sample's metadata holds the target's source, URL and, under `target_metadata`, the target
    pair's metadata.
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
    instruction = fill_instruction(template, values)
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
        metadata={
            "source": target.source,
            **({"url": target.url} if target.url else {}),
            # The target pair's own metadata (sidecar fields such as license and author, quality
            # metrics): the dataset's only per-sample record of them.
            **({"target_metadata": dict(target.metadata)} if target.metadata else {}),
        },
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
