"""Validation rules, de-duplication, the template store and review decisions (no LLM needed)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mmdata.core.tasks import TASKS, get_task
from mmdata.core.templates import load_templates
from mmdata.llm import review, store
from mmdata.llm.store import TemplateEntry, template_id
from mmdata.llm.validate import check_template, normalise, validate_file

EDGE = get_task("edge2img")
SUBJ = get_task("subject2img")
STYLE_T = get_task("style_transfer")


@pytest.mark.parametrize(
    "spec,text",
    [
        (EDGE, "Generate an image of {caption} that follows the edges in [ref#1]."),
        (SUBJ, "Show the {subject} of [ref#1], [ref#2] and [ref#3] in {caption}."),
        (STYLE_T, "Paint [ref#1] again, borrowing the look of [ref#2]."),
        (get_task("txt2img"), "Draw {caption}."),
    ],
)
def test_valid_templates_pass(spec, text):
    assert check_template(text, spec) == []


@pytest.mark.parametrize(
    "spec,text,reason",
    [
        (EDGE, "Generate an image of {caption}.", "missing_marker: [ref#1]"),
        (EDGE, "Use [ref#1] and [ref#1] for {caption}.", "repeated_marker: [ref#1] x2"),
        (EDGE, "Use [ref#1] and [ref#2] for {caption}.", "unknown_marker: [ref#2]"),
        (EDGE, "Follow the edges of ref#1 to draw {caption}.", "malformed_marker"),
        (EDGE, "Follow the edges of [ref 1] to draw {caption}.", "malformed_marker"),
        (EDGE, "Follow the edges in [ref#1] closely.", "missing_placeholder: {caption}"),
        (EDGE, "Draw {caption} and {caption} from [ref#1].", "repeated_placeholder"),
        (EDGE, "Draw {caption} like {style} from [ref#1].", "unknown_placeholder: {style}"),
        (STYLE_T, "Redraw [ref#1] as {caption} in the style of [ref#2].", "unknown_placeholder"),
        (EDGE, "Draw {caption} from [ref#1] {", "leftover_brace"),
        (EDGE, "Draw {caption} from [ref#1] [edge].", "leftover_bracket"),
        (EDGE, "[ref#1]{caption}", "too_few_words"),
        (get_task("txt2img"), "A {caption}", "too_short"),
        (EDGE, "Draw {caption} from [ref#1]. " + "Very nice. " * 30, "too_long"),
        (EDGE, "Draw {caption}\nfrom [ref#1].", "multiline"),
        (EDGE, "Rephrasing: draw {caption} from [ref#1].", "role_word"),
        (EDGE, "model: draw {caption} from [ref#1].", "role_word"),
        (EDGE, "Draw {caption} from [ref#1]<end_of_turn>", "chat_token"),
        (EDGE, "Keep the markers: draw {caption} from [ref#1].", "role_word"),
        (EDGE, "7. Draw {caption} from [ref#1].", "list_prefix"),
        (EDGE, "", "empty"),
        # whitespace that string.printable lets through, and invisible characters
        (EDGE, "Draw {caption}\tfrom the edges of [ref#1].", "control_characters"),
        (EDGE, "Draw {caption}\x0bfrom the edges of [ref#1].", "control_characters"),
        (EDGE, "Draw {caption}\x0cfrom the edges of [ref#1].", "control_characters"),
        (EDGE, "Draw {caption} from the edges\u200b of [ref#1].", "control_characters"),
    ],
)
def test_invalid_templates_give_reasons(spec, text, reason):
    reasons = check_template(text, spec)
    assert any(r.startswith(reason) for r in reasons), reasons


def test_normalise():
    assert normalise("Draw {caption}, from [ref#1]!") == normalise("draw  {caption} from [ref#1]")
    assert normalise("Draw [ref#1]") != normalise("Draw [ref#2]")


def test_shipped_templates_are_valid_and_loadable():
    for task, spec in TASKS.items():
        tf = store.load(task)
        for t in tf.with_status("accepted"):
            assert check_template(t.text, spec) == [], (task, t.id, t.text)
        assert len(load_templates(task)) >= 3  # the lead's loader agrees


def _tf_with(tmp: Path, texts: list[str], task: str = "edge2img") -> store.TemplateFile:
    tf = store.load(task, tmp)
    for t in texts:
        tf.add(TemplateEntry(id=template_id(task, t), text=t))
    return tf


def test_dedup_normalised_and_embedding(templates_copy, embedder):
    seed = store.load("edge2img", templates_copy).with_status("accepted")[0].text
    texts = [
        seed.replace("Generate", "generate").rstrip(".") + " !",  # same normalised text as a seed
        "Create a picture of {caption} whose outlines follow the edge map [ref#1].",
        "Create a picture of {caption} whose outlines follow the edge map [ref#1] exactly.",
        "Paint {caption} as a watercolour, guided by the line drawing [ref#1].",
        "Draw {caption} from [ref#2].",  # invalid: never reaches de-duplication
    ]
    tf = _tf_with(templates_copy, texts)
    rep = validate_file(tf, EDGE, embedder=embedder, threshold=0.95)
    status = {t.text: t for t in tf.templates}
    assert status[texts[0]].status == "rejected"
    assert status[texts[0]].reasons[0].startswith("duplicate_of: edge2img-seed-001")
    assert status[texts[1]].status == "candidate"
    assert status[texts[2]].status == "rejected"
    assert (
        status[texts[2]]
        .reasons[0]
        .startswith("near_duplicate_of: " + template_id("edge2img", texts[1]))
    )
    assert status[texts[3]].status == "candidate"
    assert status[texts[4]].reasons == ["missing_marker: [ref#1]", "unknown_marker: [ref#2]"]
    assert rep.kept == 2 and len(rep.rejected) == 3 and rep.ok
    assert rep.reason_counts()["duplicate_of"] == 1


def test_store_roundtrip_keeps_header_and_seeds(tmp_path):
    src = Path(store.DEFAULT_TEMPLATES_DIR) / "txt2img.yaml"
    (tmp_path / "txt2img.yaml").write_text(src.read_text())
    tf = store.load("txt2img", tmp_path)
    store.save(tf)
    assert (tmp_path / "txt2img.yaml").read_text() == src.read_text()
    tf.add(TemplateEntry(id="x-1", text="{caption}, drawn", provenance={"model": "m"}))
    store.save(tf)
    again = store.load("txt2img", tmp_path)
    assert again.header == tf.header and again.by_id()["x-1"].provenance == {"model": "m"}
    assert again.by_id()["x-1"].text == "{caption}, drawn"


def test_review_decisions_file(templates_copy):
    good = "Sketch {caption} on top of the edge map [ref#1]."
    dropped = "Sketch {caption} nicely."  # dropped the marker
    meaning = "Ignore [ref#1] and draw {caption} freely."
    tf = _tf_with(templates_copy, [good, dropped, meaning])
    ids = [template_id("edge2img", t) for t in (good, dropped, meaning)]
    decisions = [
        {"id": ids[0], "decision": "accept", "text": good},
        {"id": ids[1], "decision": "accept", "text": dropped},
        {"id": ids[2], "decision": "reject", "text": meaning, "note": "changes the meaning"},
        {"id": "edge2img-llm-nope", "decision": "accept"},
        {"id": ids[0], "decision": "accept", "text": "other text"},
    ]
    rep = review.apply_decisions(tf, EDGE, decisions, reviewer="tester")
    by = tf.by_id()
    assert by[ids[0]].status == "accepted" and by[ids[0]].provenance["review"]["by"] == "tester"
    assert by[ids[1]].status == "rejected"  # never accepted: it fails validation
    assert "missing_marker" in rep.refused[ids[1]]
    assert by[ids[2]].status == "rejected" and by[ids[2]].reasons == [
        "reviewer: changes the meaning"
    ]
    assert "edge2img-llm-nope" in rep.refused
    assert rep.accepted == [ids[0]] and rep.rejected == [ids[2]]
    store.save(tf)
    assert [t.id for t in load_templates("edge2img", templates_copy)][-1] == ids[0]


def test_interactive_review_records_decisions(templates_copy, tmp_path):
    a = "Trace the lines of [ref#1] to make {caption}."
    b = "Make {caption} but do whatever with [ref#1]."
    c = "Let [ref#1] guide the shapes when you draw {caption}."
    tf = _tf_with(templates_copy, [a, b, c])
    recorded: list[dict] = []
    saves = []
    out = io.StringIO()
    rep = review.interactive_review(
        tf,
        EDGE,
        reviewer="me",
        record=recorded.append,
        save=lambda f: saves.append(1),
        stdin=io.StringIO("a\nhuh\nr loses the meaning\nq\n"),
        stdout=out,
    )
    by = tf.by_id()
    assert by[template_id("edge2img", a)].status == "accepted"
    assert by[template_id("edge2img", b)].status == "rejected"
    assert by[template_id("edge2img", c)].status == "candidate"  # quit before it
    assert [d["decision"] for d in recorded] == ["accept", "reject"]
    assert recorded[1]["note"] == "loses the meaning"
    assert len(saves) == 3 and rep.accepted and rep.rejected
    path = tmp_path / "d.yaml"
    review.save_decisions(path, "edge2img", "me", recorded)
    assert review.load_decisions(path)["decisions"] == recorded


def test_minilm_vectors_match_sentence_transformers(embedder):
    """The numpy forward pass gives the vectors sentence-transformers gives for the same weights
    (reference numbers computed once with `Embedder(backend="sentence-transformers")`, which
    takes 40+ s to import and so is not run here)."""
    import numpy as np

    texts = [
        "Generate an image of {caption} that follows the edges in [ref#1].",
        "Redraw [ref#1] in the style of [ref#2].",
    ]
    v = embedder.encode(texts)
    assert v.shape == (2, 384)
    np.testing.assert_allclose(
        v[0, :6], [-0.05237, 0.02917, -0.02631, -0.02064, 0.0797, 0.00843], atol=2e-5
    )
    np.testing.assert_allclose(
        v[1, :6], [-0.07896, -0.03941, -0.00492, 0.03163, 0.00781, 0.03817], atol=2e-5
    )
    assert float(v[0] @ v[1]) == pytest.approx(0.44223, abs=1e-4)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_marker_grammar_parses_and_matches_the_rules(name):
    """The constrained-decoding grammar is valid GBNF (llama.cpp's own parser) and describes
    exactly the lines that hold each marker/placeholder once, markers in order."""
    import re

    from llama_cpp import LlamaGrammar

    from mmdata.llm.prompts import marker_grammar, required_tokens

    spec = get_task(name)
    gbnf = marker_grammar(spec)
    LlamaGrammar.from_string(gbnf, verbose=False)  # raises on a grammar llama.cpp cannot parse
    # Expand the grammar's rules into a regex (it has no recursion) and check it against the
    # validator on valid and invalid lines.
    rules = dict(line.split(" ::= ", 1) for line in gbnf.strip().splitlines())

    def rx(rule: str) -> str:
        body = rules[rule]
        if rule == "text":
            return body  # a GBNF character class is also a Python regex
        out = body
        for tok in sorted(set(re.findall(r'"[^"]*"', out)), key=len, reverse=True):
            out = out.replace(tok, re.escape(tok[1:-1].encode().decode("unicode_escape")))
        return re.sub(r"\b(s\d+|text)\b", lambda m: f"(?:{rx(m.group(1))})", out).replace(" ", "")

    pattern = re.compile(rx("root").replace(r"\\n?", r"\n?"))
    toks = required_tokens(spec)
    in_order = "Use " + " then ".join(toks) + " please."
    assert pattern.fullmatch(in_order) and check_template(in_order, spec) == []
    if len(toks) >= 1:
        missing = "Use " + " then ".join(toks[1:]) + " please."
        assert not pattern.fullmatch(missing)
        twice = in_order + " " + toks[0]
        assert not pattern.fullmatch(twice)
    if len(spec.markers) >= 2:
        swapped = (
            in_order.replace("[ref#1]", "@").replace("[ref#2]", "[ref#1]").replace("@", "[ref#2]")
        )
        assert not pattern.fullmatch(swapped)
    assert not pattern.fullmatch(in_order + " [ref 9]")


def test_review_can_reverse_a_reviewer_rejection_but_not_a_validation_one(templates_copy, embedder):
    first = "Let the edge map [ref#1] guide the outlines of {caption}."
    twin = "Let the edge map [ref#1] guide the outlines of {caption}!"  # same normalised text
    dropped = "Draw {caption} with nice lines."
    tf = _tf_with(templates_copy, [first, dropped])
    ids = [template_id("edge2img", t) for t in (first, dropped)]
    review.apply_decisions(
        tf,
        EDGE,
        [{"id": ids[0], "decision": "reject", "note": "too plain"}],
        reviewer="a",
        embedder=embedder,
    )
    assert tf.by_id()[ids[0]].status == "rejected"
    rep = review.apply_decisions(
        tf, EDGE, [{"id": i, "decision": "accept"} for i in ids], reviewer="b", embedder=embedder
    )
    by = tf.by_id()
    assert rep.accepted == [ids[0]] and by[ids[0]].status == "accepted"
    assert by[ids[0]].provenance["review"]["by"] == "b"
    assert by[ids[1]].status == "rejected" and "missing_marker" in rep.refused[ids[1]]
    # a reviewer-rejected near-duplicate of an accepted template stays rejected when re-accepted
    tf2 = _tf_with(templates_copy, [twin])
    tid = template_id("edge2img", twin)
    tf2.by_id()[tid].status, tf2.by_id()[tid].reasons = "rejected", ["reviewer: meh"]
    tf2.templates.append(by[ids[0]])
    rep2 = review.apply_decisions(tf2, EDGE, [{"id": tid, "decision": "accept"}], reviewer="c")
    assert tf2.by_id()[tid].status == "rejected" and "duplicate_of" in rep2.refused[tid]


def test_marker_grammar_bounds_free_text():
    """`--grammar-max-text N`: each stretch of free text holds at most N characters (GBNF `{0,N}`),
    and llama.cpp's parser takes the bounded grammar."""
    import re

    from llama_cpp import LlamaGrammar

    from mmdata.llm.prompts import marker_grammar

    spec = get_task("edge2img")
    gbnf = marker_grammar(spec, max_text=12)
    LlamaGrammar.from_string(gbnf, verbose=False)
    rules = dict(line.split(" ::= ", 1) for line in gbnf.strip().splitlines())
    assert rules["text"] == "[^\\[\\]{}\\n]{0,12}"
    text = re.compile(rules["text"])  # a GBNF class with {m,n} is also a Python regex
    assert text.fullmatch("Draw along ") and not text.fullmatch("Draw it along the ")
    assert marker_grammar(spec).endswith("text ::= [^\\[\\]{}\\n]*\n")
    with pytest.raises(ValueError, match="positive"):
        marker_grammar(spec, max_text=0)


def test_cli_refuses_a_missing_templates_folder_and_unknown_tasks(tmp_path, capsys):
    """A check pointed at a folder that does not exist must not pass having looked at nothing."""
    from mmdata.cli import main

    missing = str(tmp_path / "nowhere")
    for cmd in (["validate", "--check", "--no-embed"], ["list"]):
        assert main(["templates", *cmd, "--templates-dir", missing]) == 2
        assert "does not exist" in capsys.readouterr().err
    assert main(["templates", "list", "--task", "bogus"]) == 2
    assert "unknown task 'bogus'" in capsys.readouterr().err


def test_template_files_are_written_readable_by_others(tmp_path: Path) -> None:
    """Atomic writes must not make shared template files private (mkstemp's 0600)."""
    import os

    old = os.umask(0o022)
    try:
        path = tmp_path / "t.yaml"
        store.atomic_write_text(path, "a: 1\n")
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)  # a mode the user chose is kept across rewrites
        store.atomic_write_text(path, "a: 2\n")
        assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == "a: 2\n"
        assert [p.name for p in tmp_path.iterdir()] == ["t.yaml"]  # no temporary file left
    finally:
        os.umask(old)


def test_hand_edited_files_that_do_not_parse_name_the_file(tmp_path: Path) -> None:
    from mmdata.core.templates import TemplateError

    (tmp_path / "txt2img.yaml").write_text("templates: [\n")
    with pytest.raises(ValueError, match=r"txt2img.yaml: not valid YAML"):
        store.load("txt2img", tmp_path)
    with pytest.raises(TemplateError, match=r"txt2img.yaml: not valid YAML"):
        load_templates("txt2img", tmp_path)
    (tmp_path / "d.yaml").write_text("decisions: [\n")
    with pytest.raises(ValueError, match=r"d.yaml: not valid YAML"):
        review.load_decisions(tmp_path / "d.yaml")


@pytest.mark.parametrize(
    "entry,problem",
    [
        ("- just a string", "expected a mapping"),
        ("- {id: a, status: accepted}", "needs a 'text' string"),
        ("- {id: a, text: [1], status: accepted}", "needs a 'text' string"),
        ("- {text: 'Draw {caption} from [ref#1].'}", "needs a 'id' string"),
        ("- {id: a, text: 'Draw {caption} from [ref#1].', provenance: [1]}", "provenance must be"),
        ("- {id: a, text: 'Draw {caption} from [ref#1].', reasons: 5}", "reasons must be a list"),
    ],
)
def test_malformed_template_entries_are_one_line_errors(tmp_path, capsys, entry, problem):
    """A hand-edited entry that is not a mapping, lacks its text or has a provenance or reasons of
    the wrong kind: every templates command says which file and entry (they were KeyError,
    AttributeError or TypeError tracebacks)."""
    from mmdata.cli import main as mmdata_main

    path = tmp_path / "edge2img.yaml"
    path.write_text("task: edge2img\nversion: 1\ntemplates:\n  " + entry + "\n")
    with pytest.raises(ValueError, match=rf"edge2img.yaml: entry 1 of 'templates': .*{problem}"):
        store.load("edge2img", tmp_path)
    for cmd in (["list", "--show"], ["validate", "--no-embed"]):
        args = ["templates", *cmd, "--task", "edge2img", "--templates-dir", str(tmp_path)]
        assert mmdata_main(args) == 2
        err = capsys.readouterr().err
        assert "edge2img.yaml: entry 1" in err and "Traceback" not in err
    if "text: [1]" in entry:  # the pipelines' loader too
        from mmdata.core.templates import TemplateError

        with pytest.raises(TemplateError, match="needs 'id' and 'text'"):
            load_templates("edge2img", tmp_path)
    (tmp_path / "edge2img.yaml").write_text("task: edge2img\nversion: x\ntemplates: []\n")
    with pytest.raises(ValueError, match="edge2img.yaml: version must be an integer"):
        store.load("edge2img", tmp_path)


@pytest.mark.parametrize(
    "text,problem",
    [
        ("Draw {caption!r} from the edges of [ref#1].", "conversion or format spec"),
        ("Draw {caption:>60} from the edges of [ref#1].", "conversion or format spec"),
        ("Draw {caption} from the edges of [ref#1] {{sharp}}.", "literal brace"),
        ("Draw {caption}, yes {caption}, from the edges of [ref#1].", "more than once"),
        ("Draw {caption}\tfrom the edges of [ref#1].", "printable"),
    ],
)
def test_load_templates_refuses_what_validation_refuses(tmp_path, text, problem):
    """The pipelines' loader (core) refuses an accepted template that `templates validate` would
    call invalid: `{caption!r}` used to pass and fill the caption's repr (quoted), `{{x}}` a literal
    brace, a tab a tab."""
    from mmdata.core.templates import Template, TemplateError, fill_template

    assert check_template(text, EDGE)  # the LLM-side rules refuse it too
    if "!r" in text:  # what it did when it was let through
        filled = fill_template(Template("t", "edge2img", text), {"caption": "a cat"})
        assert "'a cat'" in filled
    tf = store.TemplateFile(
        task="edge2img",
        templates=[TemplateEntry("edge2img-x", text, "accepted", "manual")],
    )
    store.save(tf, tmp_path / "edge2img.yaml")
    with pytest.raises(TemplateError, match=problem):
        load_templates("edge2img", tmp_path)
