"""`mmdata weights list` and `mmdata weights verify`: what model weights exist here, and are they intact."""

from __future__ import annotations

import argparse
import json
import sys

from mmdata import weights


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `weights` command with its `list` and `verify` subcommands."""
    parser = subparsers.add_parser("weights", help="list and verify model weights")
    sub = parser.add_subparsers(dest="weights_command", metavar="<list|verify>")
    sub.required = True
    for cmd, helptext in [
        ("list", "show every model with its source, license and status here"),
        (
            "verify",
            "hash the weight files (unpinned ones: check their format); exit 1 if a checked one is "
            "missing, wrong or corrupt",
        ),
    ]:
        p = sub.add_parser(cmd, help=helptext)
        p.add_argument(
            "--weights",
            action="append",
            metavar="NAME=PATH",
            help="use PATH for model NAME (repeatable; else $MMDATA_*_WEIGHTS, else the package)",
        )
        p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
        if cmd == "verify":
            p.add_argument(
                "names",
                nargs="*",
                help="models to check (default: all; missing user-supplied models only warn)",
            )
        p.set_defaults(func=_verify if cmd == "verify" else _list)


def _rows(
    names: list[str], overrides: dict[str, str]
) -> list[tuple[weights.WeightSpec, weights.WeightStatus]]:
    return [(weights.get_spec(n), weights.check(n, overrides.get(n))) for n in names]


def _print(rows: list[tuple[weights.WeightSpec, weights.WeightStatus]], as_json: bool) -> None:
    if as_json:
        for spec, st in rows:
            print(
                json.dumps(
                    {
                        "name": spec.name,
                        "state": st.state,
                        "path": st.path,
                        "origin": st.origin,
                        "sha256": st.sha256,
                        "expected_sha256": spec.sha256,
                        "format": spec.format,
                        "license": spec.license,
                        "source": spec.source,
                        "url": spec.url,
                        "message": st.message,
                        "env_var": spec.env_var,
                    }
                )
            )
        return
    print(f"{'name':24} {'state':14} {'format':26} source / license")
    for spec, st in rows:
        print(f"{spec.name:24} {st.state:14} {spec.format:26} {spec.source}")
        print(f"{'':24} {'':14} {'':26} license: {spec.license}; env: {spec.env_var}")
        if st.state in ("missing", "hash-mismatch", "corrupt", "unpinned"):
            # corrupt: which file and why; unpinned: what was checked without a pinned sha256
            print(f"{'':24} -> {st.message}")
        elif st.path:
            print(f"{'':24} -> {st.path}")


def _list(args: argparse.Namespace, beam_args: list[str]) -> int:
    overrides = weights.parse_overrides(args.weights)
    _print(_rows(list(weights.REGISTRY), overrides), args.json)
    return 0


def _verify(args: argparse.Namespace, beam_args: list[str]) -> int:
    overrides = weights.parse_overrides(args.weights)
    names = args.names or list(weights.REGISTRY)
    for n in names:
        weights.get_spec(n)
    rows = _rows(names, overrides)
    _print(rows, args.json)
    failed = [
        st.name
        for spec, st in rows
        if st.state in ("hash-mismatch", "corrupt")
        or (
            st.state == "missing"
            and (
                spec.offline_default
                or st.name in args.names
                or st.origin
                in ("argument", "env")  # a path the user gave that holds nothing usable
            )
        )
    ]
    if failed:
        print(f"weights verify: FAILED for {', '.join(failed)}", file=sys.stderr)
        return 1
    print("weights verify: ok", file=sys.stderr)
    return 0
