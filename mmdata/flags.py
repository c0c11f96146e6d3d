"""Underscore spellings of dashed options: `--max_steps` for `--max-steps`.

The Beam job subcommands take underscore options (`--input_kind`, Beam's own style) while `inspect`,
`train`, `sample`, `evaluate`, `templates` and `corpus` use dashes. `accept_underscores` lets the
latter take either spelling, so a flag typed in the other style works instead of failing as
unrecognised (used by the inspect, train, templates and corpus CLIs).
"""

from __future__ import annotations

import argparse


def underscore_spelling(option: str) -> str | None:
    """`--max-steps` -> `--max_steps`; None for an option without a dash after its `--`."""
    if not option.startswith("--") or "-" not in option[2:]:
        return None
    return "--" + option[2:].replace("-", "_")


def accept_underscores(parser: argparse.ArgumentParser) -> None:
    """Let every `--a-b` option of `parser`, and of its subcommands' parsers, also be spelt `--a_b`.

    The alias is the same action (same dest, type, default and required-ness; errors name the dashed
    spelling), so it behaves exactly like the original. It is kept out of the option list of --help,
    which says once, in the epilog, that both spellings work. An alias that is already an option of
    the parser is left alone. Call it after the options are added.
    """
    first: tuple[str, str] | None = None
    children: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            children.update((id(p), p) for p in action.choices.values())
            continue
        for option in list(action.option_strings):
            alias = underscore_spelling(option)
            if alias is None or alias in parser._option_string_actions:
                continue
            parser._option_string_actions[alias] = action
            first = first or (alias, option)
    if first is not None:
        note = (
            f"{first[0]} works as well as {first[1]}: every dashed option also takes underscores."
        )
        parser.epilog = f"{parser.epilog}\n\n{note}" if parser.epilog else note
    for child in children.values():
        accept_underscores(child)
