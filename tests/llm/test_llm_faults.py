"""Fault injection: a local HTTP server that misbehaves on purpose (timeouts, 429 with Retry-After,
500, malformed JSON, empty choices, a model that drops or invents markers, wrong model, no server).
Every run either completes or fails with a clear message, and no invalid template is accepted."""

from __future__ import annotations

import json

import pytest
from llm.llm_fault_server import FaultServer

from mmdata.cli import main as mmdata_main
from mmdata.core.tasks import get_task
from mmdata.llm import review, store
from mmdata.llm.cache import ResponseCache
from mmdata.llm.client import (
    AuthenticationFailed,
    EndpointConfig,
    EndpointUnreachable,
    LLMClient,
    ModelNotFound,
    RequestFailed,
)
from mmdata.llm.generate import generate
from mmdata.llm.server import free_port
from mmdata.llm.validate import validate_file

EDGE = get_task("edge2img")
GOOD = "Paint {caption} along the lines of [ref#1]."


def _client(url, cache_dir=None, route="completion", **kw) -> LLMClient:
    cfg = EndpointConfig(
        url,
        "fake-model",
        route,
        timeout=kw.pop("timeout", 5.0),
        max_retries=kw.pop("max_retries", 3),
        backoff_base=0.01,
        backoff_max=0.05,
        **kw,
    )
    return LLMClient(cfg, ResponseCache(cache_dir, enabled=cache_dir is not None))


def _varied(body: dict) -> str:
    """A well-behaved model: a distinct valid rephrasing per seed."""
    return f" Paint {{caption}} along the lines of [ref#1], version {body['seed']}."


@pytest.mark.parametrize("route", ["completion", "chat"])
def test_transient_faults_are_retried(templates_copy, route):
    script = [
        ("sleep", 3.0, GOOD),  # times out (client timeout 1 s), retried
        ("500",),
        ("malformed",),
        ("empty",),
        ("429", None),  # no Retry-After: plain backoff
    ]
    with FaultServer(script, default=("ok", _varied)) as srv:
        client = _client(srv.base_url, route=route, timeout=1.0, max_retries=6)
        tf = store.load("edge2img", templates_copy)
        rep = generate(tf, EDGE, client, 1, concurrency=1)
    assert rep.responses == 1 and not rep.failed
    assert rep.retries == {"timeout": 1, "5xx": 1, "bad_response": 2, "429": 1}
    assert len(rep.added) == 1 and tf.by_id()[rep.added[0]].status == "candidate"
    # the request body went to the route asked for
    assert all(
        r["path"].endswith("chat/completions" if route == "chat" else "/completions")
        for r in srv.requests
    )


def test_429_retry_after_is_honoured():
    with FaultServer([("429", 1)], default=("ok", GOOD)) as srv:
        client = _client(srv.base_url)
        res = client.request({"prompt": "x", "seed": 1})
    assert res.text == GOOD and res.attempts == 2
    waited = srv.requests[1]["t"] - srv.requests[0]["t"]
    assert 1.0 <= waited < 3.0  # the server's 1 s, not the 0.01 s backoff


def test_persistent_failures_fail_the_request_not_the_run(templates_copy):
    # request 0 always gets 500 (4 attempts), the others answer
    script = [("500",)] * 4
    with FaultServer(script, default=("ok", _varied)) as srv:
        client = _client(srv.base_url, max_retries=3)
        tf = store.load("edge2img", templates_copy)
        rep = generate(tf, EDGE, client, 3, concurrency=1)
    assert list(rep.failed) == [0] and "server error (HTTP 500)" in rep.failed[0]
    assert "gave up after 4 attempts" in rep.failed[0]
    assert rep.responses == 2 and len(rep.added) == 2

    with FaultServer([], default=("malformed",)) as srv:
        client = _client(srv.base_url, max_retries=1)
        with pytest.raises(RequestFailed, match="bad response"):
            client.request({"prompt": "x"})


def test_all_requests_failing_gives_clear_cli_error(templates_copy, cache_dir, capsys):
    with FaultServer([], default=("empty",), models=["fake-model"]) as srv:
        rc = mmdata_main(
            [
                "templates",
                "generate",
                "--task",
                "edge2img",
                "--n",
                "2",
                "--base-url",
                srv.base_url,
                "--model",
                "fake-model",
                "--mode",
                "completion",
                "--max-retries",
                "1",
                "--templates-dir",
                str(templates_copy),
                "--cache-dir",
                str(cache_dir),
                "--no-embed",
            ]
        )
    err = capsys.readouterr().err
    assert rc == 2 and "every request failed" in err and "response has no choices" in err


def test_unreachable_endpoint_is_a_clear_error(templates_copy, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    client = _client(url)
    with pytest.raises(EndpointUnreachable, match="cannot reach the LLM endpoint at " + url):
        client.check_model()
    with pytest.raises(EndpointUnreachable, match="--base-url"):
        client.request({"prompt": "x"})
    rc = mmdata_main(
        [
            "templates",
            "generate",
            "--task",
            "edge2img",
            "--n",
            "2",
            "--base-url",
            url,
            "--model",
            "m",
            "--templates-dir",
            str(templates_copy),
            "--no-cache",
        ]
    )
    assert rc == 2 and "cannot reach the LLM endpoint" in capsys.readouterr().err


def _generate_args(url: str, templates_dir, *extra: str) -> list[str]:
    return [
        "templates",
        "generate",
        "--task",
        "edge2img",
        "--n",
        "1",
        "--base-url",
        url,
        "--model",
        "fake-model",
        "--mode",
        "completion",
        "--templates-dir",
        str(templates_dir),
        "--no-cache",
        "--no-embed",
        *extra,
    ]


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_failed_generate_leaves_the_file_system_as_it_was(tmp_path, templates_copy, capsys):
    """A missing --templates-dir and the lock files are only created once the endpoint answered;
    a run that then writes no template removes what taking the locks created."""
    before = _tree(tmp_path)
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    new_dir = tmp_path / "new" / "templates"
    assert mmdata_main(_generate_args(url, new_dir)) == 2
    err = capsys.readouterr().err
    assert "cannot reach the LLM endpoint" in err
    assert _tree(tmp_path) == before  # neither new/ nor new/templates/ nor a lock file
    # an existing folder gets no lock file from a refused key
    with FaultServer([], require_key="right-key") as srv:
        assert mmdata_main(_generate_args(srv.base_url, templates_copy)) == 2
        assert "HTTP 401" in capsys.readouterr().err
        assert _tree(tmp_path) == before
        # the endpoint answers but the new folder has no seed templates: the run fails after
        # taking the locks, and what they created goes again
        srv.require_key = None
        assert mmdata_main(_generate_args(srv.base_url, new_dir)) == 2
        assert "no accepted templates" in capsys.readouterr().err
        assert _tree(tmp_path) == before
        # a run that writes keeps its folder and lock file
        assert mmdata_main(_generate_args(srv.base_url, templates_copy)) == 0
    assert store.lock_path(store.task_path("edge2img", templates_copy)).exists()
    # validate and review of a folder that does not exist say so and create nothing
    for cmd in (["validate", "--no-embed"], ["review", "--decisions", str(tmp_path / "d.yaml")]):
        args = ["templates", *cmd, "--task", "edge2img", "--templates-dir", str(new_dir)]
        assert mmdata_main(args) == 2
        assert "does not exist" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()


def test_unreachable_endpoint_names_the_setting_that_gave_it(templates_copy, capsys, monkeypatch):
    """Given a URL (flag or environment), the error names it and that setting; it tells to pass
    --base-url only when none was given."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointUnreachable) as e:
        _client(url, base_url_from="--base-url").check_model()
    msg = str(e.value)
    assert url in msg and "the URL given with --base-url could not be reached" in msg
    assert "pass --base-url" not in msg
    with pytest.raises(EndpointUnreachable) as e:
        _client(url, base_url_from="MMDATA_LLM_BASE_URL").check_model()
    msg = str(e.value)
    assert url in msg and "the URL set in $MMDATA_LLM_BASE_URL could not be reached" in msg
    assert "pass --base-url" not in msg
    # through the command: the flag, then the environment variable
    for argv, env in (
        (["--base-url", url], None),
        ([], "MMDATA_LLM_BASE_URL"),
        ([], "OPENAI_BASE_URL"),
    ):
        monkeypatch.delenv("MMDATA_LLM_BASE_URL", raising=False)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        if env:
            monkeypatch.setenv(env, url)
        rc = mmdata_main(
            ["templates", "generate", *argv, "--model", "m", "--no-cache"]
            + ["--templates-dir", str(templates_copy)]
        )
        err = capsys.readouterr().err
        assert rc == 2 and url in err and "pass --base-url" not in err, err
        assert (f"${env}" if env else "given with --base-url") in err, err


def test_refused_without_an_api_key_says_how_to_set_one(templates_copy, capsys, monkeypatch):
    """401/403 with no key set: the message says that no key is set and which variable to set;
    with a key set, that the key was refused, never what it is."""
    monkeypatch.delenv("MMDATA_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FaultServer([], require_key="right-key") as srv:
        with pytest.raises(
            AuthenticationFailed, match="HTTP 401.*no API key is set.*MMDATA_LLM_API_KEY"
        ):
            _client(srv.base_url).check_model()
        with pytest.raises(AuthenticationFailed, match="no API key is set"):
            _client(srv.base_url).request({"prompt": "x"})
        assert mmdata_main(_generate_args(srv.base_url, templates_copy)) == 2
        err = capsys.readouterr().err
        assert "no API key is set" in err and "export MMDATA_LLM_API_KEY=<key>" in err
        wrong = "sk-wrong-key-0123456789"
        monkeypatch.setenv("MMDATA_LLM_API_KEY", wrong)
        assert mmdata_main(_generate_args(srv.base_url, templates_copy)) == 2
        err = capsys.readouterr().err
        assert "refused the API key (HTTP 401)" in err and "no API key is set" not in err
        assert wrong not in err
    with FaultServer([("403",)]) as srv:
        with pytest.raises(AuthenticationFailed, match="HTTP 403.*may use this model"):
            _client(srv.base_url, api_key=wrong).request({"prompt": "x"})
    with FaultServer([("403",)]) as srv:
        with pytest.raises(AuthenticationFailed, match="HTTP 403.*no API key is set"):
            _client(srv.base_url).request({"prompt": "x"})


def test_wrong_model_name_is_a_clear_error(templates_copy, capsys):
    with FaultServer([("404model",)], models=["served-model"]) as srv:
        client = _client(srv.base_url)  # asks for "fake-model"
        with pytest.raises(ModelNotFound, match="'fake-model' is not served .* served-model"):
            client.check_model()
        with pytest.raises(ModelNotFound, match="HTTP 404"):
            client.request({"prompt": "x"})  # endpoints without a listing say it per request
        rc = mmdata_main(
            [
                "templates",
                "generate",
                "--task",
                "edge2img",
                "--base-url",
                srv.base_url,
                "--model",
                "nope",
                "--templates-dir",
                str(templates_copy),
                "--no-cache",
            ]
        )
    assert rc == 2 and "model 'nope' is not served" in capsys.readouterr().err


def test_dropped_and_invented_markers_are_never_accepted(templates_copy):
    replies = iter(
        [
            " Paint {caption} nicely.",  # drops [ref#1]
            " Paint {caption} from [ref#1] and [ref#2].",  # invents [ref#2]
            " Paint {caption} from [ref#1] in {style}.",  # invents a placeholder
            " Paint the thing from [ref#1].",  # drops {caption}
            " Paint {caption} from [ref#1].<end_of_turn>",  # chat framing leaks
            " Paint {caption} along the outline of [ref#1].",  # fine
        ]
    )
    with FaultServer([], default=("ok", lambda body: next(replies))) as srv:
        client = _client(srv.base_url)
        tf = store.load("edge2img", templates_copy)
        rep = generate(tf, EDGE, client, 6, concurrency=1)
    vrep = validate_file(tf, EDGE, embedder=None)
    assert vrep.kept == 1 and len(vrep.rejected) == 5
    reasons = {f.text: f.reasons for f in vrep.rejected}
    assert reasons["Paint {caption} nicely."] == ["missing_marker: [ref#1]"]
    assert reasons["Paint {caption} from [ref#1] and [ref#2]."] == ["unknown_marker: [ref#2]"]
    assert "unknown_placeholder: {style}" in reasons["Paint {caption} from [ref#1] in {style}."]
    # a reviewer accepting everything still gets only the valid one
    decisions = [{"id": tid, "decision": "accept"} for tid in rep.added]
    rrep = review.apply_decisions(tf, EDGE, decisions, reviewer="t")
    assert len(rrep.accepted) == 1 and len(rrep.refused) == 5
    assert [t.text for t in tf.with_status("accepted") if t.id in rep.added] == [
        "Paint {caption} along the outline of [ref#1]."
    ]


def test_concurrency_limit_and_cache_rerun(templates_copy, cache_dir):
    with FaultServer(
        [], default=("ok", lambda b: (__import__("time").sleep(0.2), _varied(b))[1])
    ) as srv:
        client = _client(srv.base_url, cache_dir)
        tf = store.load("edge2img", templates_copy)
        rep = generate(tf, EDGE, client, 8, concurrency=3)
        assert srv.max_in_flight == 3 and rep.sent == 8 and len(rep.added) == 8
        first = store.dumps(tf)
        # rerun: everything from the cache, nothing sent, same candidates
        tf2 = store.load("edge2img", templates_copy)
        client2 = _client(srv.base_url, cache_dir)
        rep2 = generate(tf2, EDGE, client2, 8, concurrency=3)
        assert rep2.sent == 0 and rep2.cached == 8 and rep2.added == rep.added
        assert store.dumps(tf2) == first
        assert len(srv.requests) == 8


def test_interrupt_keeps_partial_progress(templates_copy, cache_dir):
    saved = []

    def progress(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with FaultServer([], default=("ok", _varied)) as srv:
        client = _client(srv.base_url, cache_dir)
        tf = store.load("edge2img", templates_copy)
        with pytest.raises(KeyboardInterrupt):
            generate(
                tf,
                EDGE,
                client,
                10,
                concurrency=1,
                progress=progress,
                save=lambda f: saved.append(store.save(f)),
            )
        on_disk = store.load("edge2img", templates_copy)
        assert len(on_disk.with_status("candidate")) == 3 and saved
        # resume: cached responses cost nothing, only the others are sent. The one request in
        # flight at the interrupt is not waited for (Ctrl-C stays prompt): it is sent again unless
        # its answer reached the cache before the resume asked for it (timing, so both occur).
        rep = generate(on_disk, EDGE, _client(srv.base_url, cache_dir), 10, concurrency=2)
        assert rep.cached >= 3 and rep.cached + rep.sent == 10
        assert len(srv.requests) in (10, 11)
        assert len(on_disk.with_status("candidate")) == 10


@pytest.mark.parametrize("source", ["env", "file", "flag"])
def test_api_key_never_lands_in_files_or_output(
    templates_copy, cache_dir, capsys, caplog, monkeypatch, tmp_path, source
):
    """Whether the key comes from MMDATA_LLM_API_KEY, --api-key-file or --api-key, it is sent and
    never written to output, logs (-v), the cache or the template files; --api-key (visible to
    other users in ps) is accepted with a one-line warning naming the alternatives."""
    secret = "sk-test-very-secret-0123456789"
    monkeypatch.delenv("MMDATA_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    key_args: list[str] = []
    if source == "env":
        monkeypatch.setenv("MMDATA_LLM_API_KEY", secret)
    elif source == "file":
        key_file = tmp_path / "llm.key"
        key_file.write_text(f"  {secret}\n\n")  # surrounding whitespace is not part of the key
        monkeypatch.setenv("OPENAI_API_KEY", "sk-the-file-wins-over-the-environment")
        key_args = ["--api-key-file", str(key_file)]
    else:
        key_args = ["--api-key", secret]
    with FaultServer([("500",)], default=("ok", _varied), require_key=secret) as srv:
        rc = mmdata_main(
            [
                "-v",
                "templates",
                "generate",
                "--task",
                "edge2img",
                "--n",
                "2",
                "--base-url",
                srv.base_url,
                "--model",
                "fake-model",
                "--mode",
                "completion",
                "--templates-dir",
                str(templates_copy),
                "--cache-dir",
                str(cache_dir),
                "--no-embed",
                *key_args,
            ]
        )
    assert rc == 0
    headers = {k.lower(): v for k, v in srv.requests[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {secret}"  # it was used
    out = capsys.readouterr()
    assert secret not in out.out + out.err + caplog.text
    warnings = [line for line in out.err.splitlines() if line.startswith("warning: --api-key")]
    if source == "flag":
        assert len(warnings) == 1, out.err
        assert "ps" in warnings[0] and "other users" in warnings[0]
        assert "MMDATA_LLM_API_KEY" in warnings[0] and "--api-key-file PATH" in warnings[0]
    else:
        assert warnings == [], out.err
    for path in list(templates_copy.rglob("*")) + list(cache_dir.rglob("*")):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
    entry = store.load("edge2img", templates_copy).with_status("candidate")[0]
    prov = entry.provenance
    assert prov["model"] == "fake-model" and prov["endpoint_kind"] == "completion"
    assert len(prov["prompt_sha256"]) == 64 and prov["sampling"]["seed"] in (0, 1)
    assert prov["sampling"]["stop"] == ["\n"] and prov["date"]
    assert json.dumps(prov)  # plain data


def test_busy_background_server_is_still_found(tmp_path, monkeypatch):
    """A background server busy generating answers /models slowly: it is still the running one
    (not treated as gone, which would start a second server); a closed port is gone."""
    import os
    import socket

    from mmdata.llm import server

    monkeypatch.setenv("MMDATA_CACHE_DIR", str(tmp_path))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)  # accepts connections, never answers
    port = busy.getsockname()[1]
    state = {"pid": os.getpid(), "base_url": f"http://127.0.0.1:{port}/v1", "model": "m"}
    server.state_file().write_text(json.dumps(state))
    try:
        assert server.running_server() == state
    finally:
        busy.close()
    closed = free_port()
    server.state_file().write_text(
        json.dumps({**state, "base_url": f"http://127.0.0.1:{closed}/v1"})
    )
    assert server.running_server() is None


def test_recorded_server_is_only_found_if_it_serves_its_model(tmp_path, monkeypatch):
    """The recorded server died and something else answers on its port: that is not the server
    (a JSON answer without its model, or no model list at all), so a new one would be started."""
    import os

    from mmdata.llm import server

    monkeypatch.setenv("MMDATA_CACHE_DIR", str(tmp_path))
    for models, reply, found in (
        (("gemma",), None, True),
        (("other-model",), None, False),
        (("gemma",), (200, "application/json", b'["not", "a", "model", "list"]'), False),
        (("gemma",), (200, "application/json", b'{"data": [1, 2]}'), False),
    ):
        with FaultServer(models=models, models_reply=reply) as srv:
            state = {"pid": os.getpid(), "base_url": srv.base_url, "model": "gemma"}
            server.state_file().write_text(json.dumps(state))
            assert (server.running_server() == state) is found, (models, reply)


def test_server_start_without_the_llm_group_is_one_line(tmp_path, monkeypatch, capsys):
    """`mmdata templates server start|run` where llama-cpp-python is not installed: the install
    hint as one line, exit 1 (it was a RuntimeError traceback)."""
    import sys

    monkeypatch.setenv("MMDATA_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    for action in ("start", "run"):
        assert mmdata_main(["templates", "server", action, "--threads", "1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert err[0].startswith("mmdata templates: error: ") and "`llm` dependency group" in err[0]


SUBJECT = get_task("subject2img")


def test_group_markers_prompt_and_expansion(templates_copy):
    """--group-markers: the model sees the three subject markers as one token `{refs}`; its reply
    is expanded back to the marker list before validation, and a reply that drops or repeats the
    token is refused like any other marker fault."""
    from mmdata.llm.prompts import GROUP_TOKEN, Sampling

    replies = iter(
        [
            " Paint {caption}, with the {subject} of {refs} in it.",  # fine
            " Paint {caption} with the {subject}.",  # drops the group
            " Paint {caption} like {refs}, the {subject} of {refs}.",  # repeats it
        ]
    )
    sampling = Sampling(group_markers=True)
    with FaultServer([], default=("ok", lambda body: next(replies))) as srv:
        client = _client(srv.base_url)
        tf = store.load("subject2img", templates_copy)
        rep = generate(tf, SUBJECT, client, 3, concurrency=1, sampling=sampling)
        prompts = [r["body"]["prompt"] for r in srv.requests]
    assert len(rep.added) == 3
    for prompt in prompts:
        assert GROUP_TOKEN in prompt and "[ref#" not in prompt
        assert f"contains {GROUP_TOKEN}, {{caption}} and {{subject}} exactly once" in prompt
    by_id = tf.by_id()
    first = by_id[rep.added[0]]
    assert (
        first.text == "Paint {caption}, with the {subject} of [ref#1], [ref#2] and [ref#3] in it."
    )
    assert first.provenance["model_text"] == "Paint {caption}, with the {subject} of {refs} in it."
    assert first.provenance["sampling"]["group_markers"] == {
        GROUP_TOKEN: "[ref#1], [ref#2] and [ref#3]"
    }
    vrep = validate_file(tf, SUBJECT, embedder=None)
    reasons = {f.text: f.reasons for f in vrep.rejected}
    assert vrep.kept == 1 and len(reasons) == 2
    assert "missing_marker: [ref#1]" in reasons["Paint {caption} with the {subject}."]
    repeated = "Paint {caption} like [ref#1], [ref#2] and [ref#3], the {subject} of [ref#1], [ref#2] and [ref#3]."
    assert any(r.startswith("repeated_marker") for r in reasons[repeated]), reasons[repeated]


def test_group_markers_refuses_tasks_with_distinct_roles():
    from mmdata.llm.prompts import Sampling, request_body

    ex = ["Redraw [ref#1] in the style of [ref#2]."]
    with pytest.raises(ValueError, match="share one role"):
        request_body("completion", get_task("style_transfer"), ex, Sampling(group_markers=True), 0)
    with pytest.raises(ValueError, match="share one role"):
        request_body(
            "completion", get_task("txt2img"), ["Draw {caption}."], Sampling(group_markers=True), 0
        )
    with pytest.raises(ValueError, match="accept one first"):
        request_body(
            "completion",
            SUBJECT,
            ["Draw {caption}: the {subject} of [ref#1], [ref#2] or [ref#3]."],
            Sampling(group_markers=True),
            0,
        )
    with pytest.raises(ValueError, match="cannot be combined"):
        request_body("completion", SUBJECT, ["x"], Sampling(group_markers=True, grammar="gbnf"), 0)


def test_two_writers_of_one_template_file_are_refused(templates_copy, capsys):
    """While one command holds a task's template file (e.g. a long `generate` run), `review` and
    `validate` of that task stop at once with a clear error instead of overwriting each other's
    saves; other tasks and `validate --check` are not blocked."""
    path = store.task_path("edge2img", templates_copy)
    before = path.read_text()
    with store.writer_lock(path):
        args = ["templates", "validate", "--task", "edge2img", "--no-embed"]
        assert mmdata_main([*args, "--templates-dir", str(templates_copy)]) == 2
        err = capsys.readouterr().err
        assert "being changed by another mmdata templates command" in err
        assert f"pid {__import__('os').getpid()}" in err
        decisions = templates_copy / "d.yaml"
        decisions.write_text("task: edge2img\ndecisions: []\n")
        review_args = ["templates", "review", "--task", "edge2img", "--decisions", str(decisions)]
        assert mmdata_main([*review_args, "--templates-dir", str(templates_copy)]) == 2
        assert path.read_text() == before
        # read-only check and another task's file are free
        check = ["templates", "validate", "--task", "edge2img", "--check", "--no-embed"]
        assert mmdata_main([*check, "--templates-dir", str(templates_copy)]) == 0
        other = ["templates", "validate", "--task", "depth2img", "--no-embed"]
        assert mmdata_main([*other, "--templates-dir", str(templates_copy)]) == 0
    # released: the same command runs
    assert mmdata_main([*args, "--templates-dir", str(templates_copy)]) == 0


def test_repeated_replies_in_one_run_are_counted_and_keep_the_first_request(templates_copy):
    """Four requests return one text; the first request answers last. The text is added once, with
    request 0's provenance whatever the order of arrival, and the other three are counted."""

    def reply(body):
        if body["seed"] == 0:
            __import__("time").sleep(0.3)
        return " Paint {caption} along the lines of [ref#1], once more."

    with FaultServer([], default=("ok", reply)) as srv:
        tf = store.load("edge2img", templates_copy)
        rep = generate(tf, EDGE, _client(srv.base_url), 4, concurrency=4)
    assert len(rep.added) == 1 and rep.repeated == 3 and rep.responses == 4
    assert rep.responses == len(rep.added) + rep.already_present + rep.repeated + rep.empty
    assert tf.by_id()[rep.added[0]].provenance["sampling"]["seed"] == 0
    assert "3 repeated a reply of this run" in rep.summary()


def test_ctrl_c_ends_generate_without_waiting_for_requests_in_flight(templates_copy, tmp_path):
    """SIGINT while a request hangs: the command saves, says how to resume and exits at once with
    130, instead of waiting out the request at interpreter exit."""
    import signal
    import subprocess
    import sys
    import time

    with FaultServer([], default=("sleep", 30, GOOD)) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from mmdata.cli import main; sys.exit(main())"]
            + _generate_args(srv.base_url, templates_copy, "--n", "3", "--concurrency", "2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while not srv.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.requests, "the command never sent a request"
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        took = time.monotonic() - sent
    assert proc.returncode == 130, out
    assert "rerun the same command to resume" in out
    assert took < 10, f"exit took {took:.1f} s after Ctrl-C"


def test_quota_exhausted_stops_the_run_and_408_409_are_retried(templates_copy, capsys):
    """A 429 insufficient_quota never clears: the run stops at the first one with a message that
    says so (instead of retrying every request with backoff); 408 and 409 are transient, retried."""
    from mmdata.llm.client import QuotaExhausted

    with FaultServer([("status", 408), ("status", 409)], default=("ok", GOOD)) as srv:
        res = _client(srv.base_url).request({"prompt": "x", "seed": 1})
        assert res.text == GOOD and res.attempts == 3
    with FaultServer([], default=("quota",)) as srv:
        with pytest.raises(QuotaExhausted, match="no quota left"):
            _client(srv.base_url, max_retries=5).request({"prompt": "x"})
        assert len(srv.requests) == 1
        assert mmdata_main(_generate_args(srv.base_url, templates_copy, "--n", "200")) == 2
        err = capsys.readouterr().err
        assert "insufficient_quota" in err and "no quota left" in err
        # the first answer stops the run: no retries, and the requests not yet taken are not sent
        # (a few workers may take one more before the stop reaches them)
        assert len(srv.requests) - 1 < 100


@pytest.mark.parametrize(
    "flag",
    [
        ["--n", "-3"],
        ["--n", "many"],
        ["--concurrency", "0"],
        ["--timeout", "0"],
        ["--max-retries", "-1"],
        ["--shots", "0"],
        ["--max-tokens", "0"],
        ["--top-p", "1.5"],
        ["--temperature", "-0.1"],
        ["--threshold", "2"],
    ],
)
def test_bad_generate_numbers_are_one_line_usage_errors(flag, tmp_path, capsys):
    """Out-of-range numbers are refused before anything runs (`--max-retries -1` used to make every
    request fail with 'no attempt', `--timeout 0` to report the endpoint unreachable)."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(SystemExit) as e:
        mmdata_main(_generate_args(url, tmp_path, *flag))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag[0]}:" in err and "Traceback" not in err
    assert "cannot reach" not in err


def test_unwritable_response_cache_is_a_clear_error(tmp_path, templates_copy, capsys, caplog):
    """A --cache-dir that cannot be created is refused after the endpoint check, before anything is
    sent or written (it was a NotADirectoryError traceback from a worker thread); a cache write
    failing later keeps the reply and warns."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    before = store.task_path("edge2img", templates_copy).read_text()
    with FaultServer([], default=("ok", _varied)) as srv:
        args = [a for a in _generate_args(srv.base_url, templates_copy) if a != "--no-cache"]
        assert mmdata_main([*args, "--cache-dir", str(not_a_dir / "cache")]) == 2
        err = capsys.readouterr().err
        assert "response cache" in err and "cannot be written" in err and "--no-cache" in err
        assert not srv.requests
        assert store.task_path("edge2img", templates_copy).read_text() == before

        client = _client(srv.base_url, not_a_dir / "cache")
        res = client.request({"prompt": "x", "seed": 3})
    assert "version 3" in res.text and not res.cached
    assert "response cache not written" in caplog.text


@pytest.mark.parametrize("route", ["completion", "chat"])
def test_replies_cut_by_max_tokens_are_rejected_as_truncated(templates_copy, route):
    """A reply stopped by max_tokens mid-line can hold every marker and still be unfinished
    ("... of [ref#1] and then"): it is kept in the file, rejected with the reason `truncated`,
    and review cannot accept it. A reply whose chosen line ended before the limit is whole."""
    cut = " Paint {caption} along the lines of [ref#1] and then"
    script = [("cut", cut), ("cut", "Paint {caption} from the edges of [ref#1].\nAnd then, the")]
    with FaultServer(script, default=("ok", _varied)) as srv:
        tf = store.load("edge2img", templates_copy)
        rep = generate(tf, EDGE, _client(srv.base_url, route=route), 3, concurrency=1)
    by_text = {tf.by_id()[i].text: tf.by_id()[i] for i in rep.added}
    assert len(by_text) == 3
    vrep = validate_file(tf, EDGE, embedder=None)
    reasons = {f.text: f.reasons for f in vrep.rejected}
    assert reasons == {
        cut.strip(): ["truncated: the reply reached max_tokens before its line ended"]
    }
    assert by_text[cut.strip()].provenance["truncated"] is True
    assert by_text["Paint {caption} from the edges of [ref#1]."].status == "candidate"
    rrep = review.apply_decisions(
        tf, EDGE, [{"id": by_text[cut.strip()].id, "decision": "accept"}], reviewer="t"
    )
    assert not rrep.accepted and "truncated" in next(iter(rrep.refused.values()))


def test_resumed_run_validates_the_candidates_the_interrupted_run_saved(templates_copy, cache_dir):
    """An interrupted run saves its candidates before validating them; the rerun gets their replies
    from the cache ('already in the file') and validates them too (it validated only its new ones,
    leaving invalid texts as candidates)."""

    def reply(body):
        if body["seed"] < 2:
            return f" Paint {{caption}} nicely, take {body['seed']}."  # no marker: invalid
        return _varied(body)

    with FaultServer([], default=("ok", reply)) as srv:
        tf = store.load("edge2img", templates_copy)
        first = generate(tf, EDGE, _client(srv.base_url, cache_dir), 2, save=store.save)
        assert len(first.added) == 2  # saved, not validated (as when Ctrl-C stops the run)
        args = [a for a in _generate_args(srv.base_url, templates_copy) if a != "--no-cache"]
        assert mmdata_main([*args, "--n", "4", "--cache-dir", str(cache_dir)]) == 0
    by_id = store.load("edge2img", templates_copy).by_id()
    assert [by_id[i].status for i in first.added] == ["rejected", "rejected"]
    assert all("missing_marker: [ref#1]" in by_id[i].reasons for i in first.added)
    assert len([t for t in by_id.values() if t.status == "candidate"]) == 2


def test_secrets_in_the_base_url_are_never_shown(templates_copy, capsys, caplog):
    """A base URL with `user:password@` (a proxy with basic auth) or a secret query value: the
    password is used but the `endpoint:` line, error messages and -v logs (httpx logs every
    request's URL) show `***`."""
    from mmdata.llm.client import redact_url

    assert redact_url("https://u:pw@h.example/v1") == "https://u:***@h.example/v1"
    assert (
        redact_url("https://h.example/v1?api-version=2024&api_key=k123&sig=zz")
        == "https://h.example/v1?api-version=2024&api_key=***&sig=***"
    )
    assert redact_url("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"
    password = "pw-very-secret-42"
    with FaultServer([], default=("ok", _varied)) as srv:
        url = srv.base_url.replace("http://", f"http://proxyuser:{password}@")
        assert mmdata_main(["-v", *_generate_args(url, templates_copy)]) == 0
        assert srv.requests  # the URL was used
    dead = f"http://proxyuser:{password}@127.0.0.1:{free_port()}/v1"
    assert mmdata_main(_generate_args(dead, templates_copy)) == 2
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert password not in text
    assert "endpoint: http://proxyuser:***@127.0.0.1:" in out.out
    assert "cannot reach the LLM endpoint at http://proxyuser:***@" in out.err
    assert "HTTP Request: POST http://proxyuser:***@" in caplog.text


def test_no_endpoint_configured_is_a_one_line_usage_error(tmp_path, templates_copy, monkeypatch):
    """No --base-url, no variable and no local server running: a usage error (exit 2, as argparse's)
    on one line that names the flags and variables to set (it was exit 1); a URL without a model
    likewise, with the URL's secrets masked. Nothing is created."""
    import subprocess
    import sys

    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if not k.startswith(("MMDATA_LLM_", "OPENAI_"))
    }
    env["MMDATA_CACHE_DIR"] = str(tmp_path / "cache")  # no background server recorded there
    before = _tree(tmp_path)

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mmdata.cli", "templates", "generate", "--task", "edge2img"]
            + ["--templates-dir", str(templates_copy), "--no-cache", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    res = run()
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "mmdata templates: error: no LLM endpoint configured"
    ), lines
    for name in ("--base-url", "--model", "MMDATA_LLM_BASE_URL", "MMDATA_LLM_MODEL"):
        assert name in lines[0]
    assert "MMDATA_LLM_API_KEY" in lines[0] and "--local" in lines[0]
    assert "make llm-server-start" in lines[0]

    res = run("--base-url", "http://user:pw-secret-77@127.0.0.1:9/v1")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0] and "MMDATA_LLM_MODEL" in lines[0], lines
    assert "pw-secret-77" not in res.stderr and "user:***@127.0.0.1:9" in lines[0]
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "ctype, body, problem",
    [
        (
            "text/html",
            b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>",
            "not JSON",
        ),
        ("text/plain", b"OK", "not JSON"),
        ("application/json", b'{"status": "ok"}', 'no "data" list'),
        ("application/json", b"[1, 2, 3]", "a JSON list, not an object"),
        ("application/json", b'{"data": [{"name": "m"}]}', 'without a string "id"'),
        ("application/json", b'{"object": "page", "data": []}', "\"object\" is 'page'"),
    ],
)
def test_a_server_that_is_not_openai_compatible_is_refused(
    templates_copy, capsys, ctype, body, problem
):
    """A server answering /models with 200 but not an OpenAI models list (a web page, some other
    JSON) was taken for an endpoint (an HTML page even gave an AttributeError traceback). The check
    now fails, naming the URL, what came back (content type, size, first bytes) and the problem;
    the command sends no generation request and writes nothing."""
    from mmdata.llm.client import NotOpenAIEndpoint

    before = store.task_path("edge2img", templates_copy).read_text()
    with FaultServer([], default=("ok", _varied), models_reply=(200, ctype, body)) as srv:
        with pytest.raises(NotOpenAIEndpoint) as e:
            _client(srv.base_url, base_url_from="--base-url").check_model()
        msg = str(e.value)
        assert f"{srv.base_url}/models answered HTTP 200 with {ctype}, {len(body)} bytes" in msg
        assert "not an OpenAI models list" in msg and problem in msg
        assert repr(body.decode()) in msg
        assert "the URL given with --base-url is not an OpenAI-compatible API" in msg
        assert mmdata_main(_generate_args(srv.base_url, templates_copy)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("mmdata templates: error: ") and "not an OpenAI models list" in err
        assert not srv.requests  # no generation request was sent
    assert store.task_path("edge2img", templates_copy).read_text() == before


def test_what_a_non_openai_server_sent_is_shown_truncated_and_masked():
    """The reply shown in the error is cut to its first bytes, and the API key or the URL's password
    echoed in it (a debug page, say) are masked."""
    from mmdata.llm.client import SNIPPET_BYTES, NotOpenAIEndpoint

    key, password = "sk-echoed-key-0123456789", "pw-echoed-42"
    page = f"<html>key={key} url=http://u:{password}@h/ ".encode() + b"x" * 5000 + b"TAIL</html>"
    with FaultServer([], models_reply=(200, "text/html; charset=utf-8", page)) as srv:
        url = srv.base_url.replace("http://", f"http://u:{password}@")
        with pytest.raises(NotOpenAIEndpoint) as e:
            _client(url, api_key=key).check_model()
    msg = str(e.value)
    assert key not in msg and password not in msg
    assert "key=*** url=http://u:***@h/" in msg and "http://u:***@127.0.0.1:" in msg
    assert "TAIL" not in msg and "x..." in msg and len(msg) < SNIPPET_BYTES + 400
    assert f"text/html; charset=utf-8, {len(page)} bytes" in msg


def test_an_empty_or_minimal_openai_models_list_passes():
    """The check is of the shape only: an empty list, or entries with nothing but an id and no
    "object" field, are OpenAI enough; a /models that answers 404 is still let through."""
    for body in (b'{"object": "list", "data": []}', b'{"data": [{"id": "fake-model"}]}'):
        with FaultServer([], models_reply=(200, "application/json", body)) as srv:
            _client(srv.base_url).check_model()
    with FaultServer([], models_reply=(404, "text/html", b"<html>Not Found</html>")) as srv:
        _client(srv.base_url).check_model()


def test_ctrl_c_during_the_endpoint_check_exits_at_once_without_a_traceback(
    tmp_path, templates_copy
):
    """SIGINT while the first endpoint check waits on a server that never answers /models: one
    line, exit 130 at once (it was a KeyboardInterrupt traceback), and nothing written."""
    import signal
    import subprocess
    import sys
    import time

    before = _tree(tmp_path)
    with FaultServer([], models_reply=("sleep", 60)) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from mmdata.cli import main; sys.exit(main())"]
            + _generate_args(srv.base_url, templates_copy, "--timeout", "120"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while not srv.models_requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.models_requests, "the command never checked the endpoint"
        time.sleep(0.2)  # inside the wait for the reply
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        took = time.monotonic() - sent
        assert not srv.requests
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err
    assert srv.base_url in lines[0] and "nothing was written" in lines[0]
    assert out == ""
    assert took < 10, f"exit took {took:.1f} s after Ctrl-C"
    assert _tree(tmp_path) == before


def test_ctrl_c_while_the_local_server_starts_leaves_no_server_behind(monkeypatch):
    """`--local` starts llama.cpp's server for the command: a Ctrl-C while it is still loading
    stops that server process instead of leaving it running after the command has exited."""
    from mmdata.llm import server

    srv = server.LocalLLMServer(model=server.model_path())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "_get_json", interrupted)  # the first readiness poll
    with pytest.raises(KeyboardInterrupt):
        srv.start(timeout=60)
    assert srv.proc is not None and srv.proc.poll() is not None
    assert srv._log_file is None


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "cannot read the API key file"),  # missing
        ("", "is empty"),
        (" \n\t\n", "is empty"),
        ("sk-one sk-two\n", "more than one word"),
        (b"\xff\xfesk-key", "not UTF-8 text"),
        ("dir", "cannot read the API key file"),  # a folder
    ],
)
def test_unusable_api_key_file_is_a_one_line_usage_error(
    tmp_path, templates_copy, capsys, content, problem
):
    """--api-key-file that is missing, a folder, empty, not text or not a single key: exit 2 with
    one line naming the file (never what it holds), before any request or file is made."""
    path = tmp_path / "llm.key"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    before = _tree(tmp_path)
    with FaultServer([], default=("ok", _varied)) as srv:
        rc = mmdata_main(_generate_args(srv.base_url, templates_copy, "--api-key-file", str(path)))
        assert not srv.requests and not srv.models_requests
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("mmdata templates: error: ") and problem in lines[0]
    ), err
    assert str(path) in lines[0] and "--api-key-file" in lines[0]
    assert "sk-one" not in err and "sk-key" not in err
    assert _tree(tmp_path) == before


def test_refused_key_from_a_file_names_the_file(tmp_path, templates_copy, capsys):
    """A 401 for a key read from --api-key-file says which file to fix; --api-key and
    --api-key-file together are a usage error."""
    path = tmp_path / "llm.key"
    path.write_text("sk-wrong-key-0123456789\n")
    with FaultServer([], require_key="right-key") as srv:
        args = _generate_args(srv.base_url, templates_copy, "--api-key-file", str(path))
        assert mmdata_main(args) == 2
        err = capsys.readouterr().err
        assert f"refused the API key (HTTP 401); the key was read from --api-key-file {path}" in err
        assert "sk-wrong-key" not in err
        with pytest.raises(SystemExit) as e:
            mmdata_main([*args, "--api-key", "k"])
        assert e.value.code == 2
        assert "not allowed with argument" in capsys.readouterr().err
