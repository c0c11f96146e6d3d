"""Against the real local endpoint: llama.cpp's OpenAI-compatible server with Gemma 3 270M, started
on a free loopback port by the session fixture `local_llm`. A few requests per route, then
validation, review and instantiation through the pipelines' template loader."""

from __future__ import annotations

import pytest

from mmdata.cli import main as mmdata_main
from mmdata.core.tasks import get_task
from mmdata.core.templates import fill_template, load_templates
from mmdata.llm import review, server, store
from mmdata.llm.cache import ResponseCache
from mmdata.llm.client import EndpointConfig, LLMClient, ModelNotFound
from mmdata.llm.generate import generate
from mmdata.llm.prompts import Sampling
from mmdata.llm.validate import check_template, validate_file

EDGE = get_task("edge2img")
N_COMPLETION = 8


def _client(srv, route: str, cache_dir) -> LLMClient:
    cfg = EndpointConfig(srv.base_url, srv.alias, route, timeout=120, kind=server.ENDPOINT_KIND)
    return LLMClient(cfg, ResponseCache(cache_dir))


def test_completion_route_generate_validate_review_fill(
    local_llm, templates_copy, cache_dir, embedder
):
    client = _client(local_llm, "completion", cache_dir)
    client.check_model()
    tf = store.load("edge2img", templates_copy)
    rep = generate(tf, EDGE, client, N_COMPLETION, concurrency=2, save=store.save)
    assert rep.responses == N_COMPLETION and not rep.failed and rep.sent == N_COMPLETION
    assert rep.added, rep.summary()

    # rerun (same accepted set, same seeds): all from the cache, nothing sent, same candidates
    rep2 = generate(
        store.load("edge2img", templates_copy),
        EDGE,
        _client(local_llm, "completion", cache_dir),
        N_COMPLETION,
    )
    assert rep2.sent == 0 and rep2.cached == N_COMPLETION
    assert rep2.added == [] and rep2.already_present >= len(rep.added)
    vrep = validate_file(tf, EDGE, embedder=embedder, ids=set(rep.added))
    assert vrep.kept >= 1, [(f.text, f.reasons) for f in vrep.rejected]
    for f in vrep.rejected:
        assert f.reasons  # a reason for every rejected candidate
    kept = tf.with_status("candidate")
    for t in kept:
        assert check_template(t.text, EDGE) == []
        assert t.provenance["model"] == local_llm.alias
        assert t.provenance["endpoint"] == server.ENDPOINT_KIND
    # review: accept every candidate the validator kept, try to accept a rejected one too
    decisions = [{"id": t.id, "decision": "accept", "text": t.text} for t in kept]
    if vrep.rejected:
        decisions.append({"id": vrep.rejected[0].id, "decision": "accept"})
    rrep = review.apply_decisions(tf, EDGE, decisions, reviewer="pytest", embedder=embedder)
    assert len(rrep.accepted) == len(kept)
    assert all(r.startswith("cannot accept") for r in rrep.refused.values())
    store.save(tf)

    # the pipelines' loader takes them; instantiated text keeps the marker and the caption
    loaded = {t.id: t for t in load_templates("edge2img", templates_copy)}
    caption = "a red {fox} under [the] moon"
    for t in kept:
        filled = fill_template(loaded[t.id], {"caption": caption})
        assert filled.count("[ref#1]") == 1 and caption in filled
        assert "{caption}" not in filled


def test_chat_route_on_the_base_model(local_llm, templates_copy, cache_dir):
    """The chat route works end to end; the base model's chat answers are mostly unusable,
    and validation says why for each."""
    spec = get_task("style2img")
    client = _client(local_llm, "chat", cache_dir)
    tf = store.load("style2img", templates_copy)
    rep = generate(tf, spec, client, 2, concurrency=1, sampling=Sampling(max_tokens=32))
    assert rep.responses == 2 and not rep.failed
    vrep = validate_file(tf, spec, embedder=None)
    assert vrep.kept + len(vrep.rejected) == len(rep.added)
    for f in vrep.rejected:
        assert f.reasons
    for t in tf.with_status("candidate"):
        assert check_template(t.text, spec) == []
        assert t.provenance["endpoint_kind"] == "chat"


def test_wrong_model_name_on_the_real_server(local_llm):
    cfg = EndpointConfig(local_llm.base_url, "gemma-7b-it", "completion")
    with pytest.raises(ModelNotFound, match=r"'gemma-7b-it' is not served .*gemma-3-270m"):
        LLMClient(cfg).check_model()


def test_background_server_and_cli_generate(
    local_llm, templates_copy, cache_dir, tmp_path, monkeypatch, capsys
):
    """`make llm-server-start` path: a detached server is found by `mmdata templates generate`
    without any endpoint settings, and stopped again."""
    for var in ("MMDATA_LLM_BASE_URL", "OPENAI_BASE_URL", "MMDATA_LLM_MODEL", "MMDATA_LLM_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MMDATA_CACHE_DIR", str(tmp_path / "cache"))
    state = server.start_background(model=local_llm.model)
    try:
        assert server.running_server()["pid"] == state["pid"]
        rc = mmdata_main(
            [
                "templates",
                "generate",
                "--task",
                "style_transfer",
                "--n",
                "1",
                "--templates-dir",
                str(templates_copy),
                "--cache-dir",
                str(cache_dir),
            ]
        )
        out = capsys.readouterr().out
        assert rc == 0, out
        assert f"endpoint: {state['base_url']} model=gemma-3-270m route=completion" in out
        assert "1/1 responses" in out
        rc = mmdata_main(["templates", "list", "--templates-dir", str(templates_copy)])
        assert rc == 0 and "style_transfer" in capsys.readouterr().out
    finally:
        assert server.stop_background()
    assert server.running_server() is None


def test_grammar_constrained_replies_keep_every_marker(local_llm, cache_dir, templates_copy):
    """`--grammar gbnf` on the real llama.cpp server: a reply that ends by itself holds each of
    subject2img's three markers and two placeholders exactly once. The free text is bounded
    (`grammar_max_text`), so the replies end within `max_tokens`; the prompts use the seed
    templates only, so they do not change when the shipped set grows."""
    from mmdata.llm.prompts import parse_reply, request_body

    spec = get_task("subject2img")
    client = _client(local_llm, "completion", cache_dir)
    examples = [t.text for t in store.load("subject2img", templates_copy).with_status("accepted")]
    sampling = Sampling(grammar="gbnf", grammar_max_text=40, max_tokens=160)
    finished = 0
    for seed in range(3):
        body = request_body("completion", spec, examples, sampling, seed)
        assert "grammar" in body["extra_body"]
        res = client.request(body)
        text = parse_reply("completion", res.text)
        if res.finish_reason != "stop":
            continue  # cut by max_tokens before the grammar's end: may lack tokens
        finished += 1
        token_reasons = [
            r
            for r in check_template(text, spec)
            if r.split(":")[0].endswith(("marker", "placeholder"))
        ]
        assert token_reasons == [], (text, token_reasons)
    assert finished >= 1
