"""`make bench-templates`: template generation throughput on the bundled local LLM server.

For each route (few-shot completion, chat, and few-shot completion constrained by the GBNF marker
grammar, `--grammar gbnf`, on llama.cpp servers) it sends fresh requests (an empty response cache) for
rephrasings of the task's accepted templates, validates the replies (rules + MiniLM
near-duplicates) and reports, per route: requests/min, valid templates/min and the acceptance rate
(valid / replies). "Valid" is what validation keeps, i.e. what a reviewer is then shown; the human
review that follows is not part of the benchmark.

    python -m mmdata.bench.templates [--task edge2img] [--n-completion 24] [--n-chat 6] [--n-grammar 6]
                                     [--base-url URL --model ID]  (another endpoint instead)
                                     [--out out/bench/templates.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from mmdata.core.tasks import get_task
from mmdata.llm import store
from mmdata.llm.cache import ResponseCache
from mmdata.llm.client import EndpointConfig, LLMClient, api_key_from_env
from mmdata.llm.generate import generate
from mmdata.llm.prompts import Sampling
from mmdata.llm.validate import default_embedder, validate_file


def run_route(
    base_url: str,
    model: str,
    route: str,
    task: str,
    n: int,
    kind: str,
    concurrency: int,
    sampling: Sampling | None = None,
) -> dict:
    spec = get_task(task)
    with tempfile.TemporaryDirectory(prefix="mmdata-bench-") as tmp:
        src = store.load(task)
        tf = store.TemplateFile(
            task=task,
            templates=src.with_status("accepted"),
            header=src.header,
            path=Path(tmp) / f"{task}.yaml",
        )
        cfg = EndpointConfig(
            base_url, model, route, api_key=api_key_from_env(), timeout=300, kind=kind
        )
        client = LLMClient(cfg, ResponseCache(Path(tmp) / "cache"))
        t0 = time.monotonic()
        sampling = sampling or Sampling()
        rep = generate(tf, spec, client, n, sampling=sampling, concurrency=concurrency)
        gen_s = time.monotonic() - t0
        vrep = validate_file(tf, spec, embedder=default_embedder(), ids=set(rep.added))
        total_s = time.monotonic() - t0
    replies = rep.responses
    return {
        "route": route + ("+gbnf" if sampling.grammar else ""),
        "task": task,
        "requests": n,
        "replies": replies,
        "failed": len(rep.failed),
        "distinct_candidates": len(rep.added),
        "valid": vrep.kept,
        "acceptance_rate": round(vrep.kept / replies, 3) if replies else 0.0,
        "generation_s": round(gen_s, 1),
        "total_s": round(total_s, 1),
        "requests_per_min": round(60 * replies / gen_s, 1) if gen_s else 0.0,
        "valid_per_min": round(60 * vrep.kept / total_s, 2) if total_s else 0.0,
        "rejection_reasons": vrep.reason_counts(),
        "examples_valid": [t.text for t in tf.with_status("candidate")][:3],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mmdata.bench.templates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", default="edge2img")
    p.add_argument("--n-completion", type=int, default=24)
    p.add_argument("--n-chat", type=int, default=6)
    p.add_argument(
        "--n-grammar",
        type=int,
        default=None,
        help="completion requests constrained by the marker grammar (default 6 on the local "
        "llama.cpp server, 0 with --base-url: other servers may not take a GBNF grammar)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="1 suits the local server, which answers one request at a time",
    )
    p.add_argument("--base-url", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="out/bench/templates.json")
    args = p.parse_args(argv)

    n_grammar = args.n_grammar if args.n_grammar is not None else (0 if args.base_url else 6)
    runs = [
        ("completion", args.n_completion, None),
        ("chat", args.n_chat, None),
        ("completion", n_grammar, Sampling(grammar="gbnf")),
    ]
    runs = [r for r in runs if r[1] > 0]
    results = []
    if args.base_url:
        if not args.model:
            p.error("--model is required with --base-url")
        for route, n, sampling in runs:
            results.append(
                run_route(
                    args.base_url,
                    args.model,
                    route,
                    args.task,
                    n,
                    "openai-compatible",
                    args.concurrency,
                    sampling,
                )
            )
        server_s = None
    else:
        from mmdata.llm.server import ENDPOINT_KIND, LocalLLMServer

        t0 = time.monotonic()
        with LocalLLMServer() as srv:
            server_s = round(time.monotonic() - t0, 1)
            for route, n, sampling in runs:
                results.append(
                    run_route(
                        srv.base_url,
                        srv.alias,
                        route,
                        args.task,
                        n,
                        ENDPOINT_KIND,
                        args.concurrency,
                        sampling,
                    )
                )
    report = {
        "benchmark": "templates",
        "endpoint": args.base_url or "local llama.cpp server, gemma-3-270m Q4_K_M",
        "server_ready_s": server_s,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "routes": results,
    }
    print(
        f"{'route':16s} {'replies':>7s} {'valid':>5s} {'accept.rate':>11s} "
        f"{'req/min':>8s} {'valid/min':>9s}"
    )
    for r in results:
        print(
            f"{r['route']:16s} {r['replies']:7d} {r['valid']:5d} {r['acceptance_rate']:11.2f} "
            f"{r['requests_per_min']:8.1f} {r['valid_per_min']:9.2f}"
        )
    if server_s is not None:
        print(f"(server ready in {server_s} s; task {args.task})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
