"""Prompts that ask an LLM for one rephrasing of a task's instruction, and parsing of the answer.

* completion route (base models): a numbered few-shot list of existing templates, ending with the
  next number; one rephrasing per call, generation stopped at the newline.
* chat route (instruction-tuned models): the examples and the rules in one user message; the reply
  is the first line that is not a preamble.
* optional constrained decoding (`grammar="gbnf"`): a GBNF grammar, sent in the `grammar` field that
  llama.cpp's servers (llama-server, llama-cpp-python) read, lets the model write any one line of text
  but places each of the task's markers and placeholders in it exactly once (markers in ascending
  order). Other servers name the field differently (vLLM: `guided_grammar`), hence `grammar_field`.
  The grammar only restricts sampling: every reply is still validated and reviewed.

Examples are drawn from the task's accepted templates in an order fixed by the request's seed, so
each request differs and the same seed gives the same prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass

from mmdata.core.tasks import TaskSpec

PROMPT_VERSION = 1
SYSTEM_PROMPT = "You write short instructions for an image-generation model."


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 48
    n_shots: int = 8
    # Consecutive seeds share one example order, so a local server reuses the evaluated prompt
    # (llama.cpp keeps the KV cache of the longest common prefix): only the reply is computed.
    shuffle_every: int = 10
    # "gbnf": constrain decoding with `marker_grammar` (sent as body[grammar_field]); None: free text
    grammar: str | None = None
    grammar_field: str = "grammar"
    # with the grammar: at most this many characters of free text between two tokens (None: any);
    # keeps a small model from rambling on before it writes the next marker
    grammar_max_text: int | None = None
    # tasks whose markers all share one role (subject2img's three subject images): the examples show
    # the marker list "[ref#1], [ref#2] and [ref#3]" as one token, GROUP_TOKEN, so a small model has
    # fewer tokens to keep; the reply's GROUP_TOKEN is expanded back to that list before validation
    group_markers: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


GROUP_TOKEN = "{refs}"


def required_tokens(spec: TaskSpec) -> list[str]:
    return list(spec.markers) + [f"{{{p}}}" for p in spec.placeholders]


def marker_list(spec: TaskSpec) -> str:
    """The task's markers as one English list: "[ref#1], [ref#2] and [ref#3]"."""
    markers = list(spec.markers)
    if len(markers) < 2:
        return "".join(markers)
    return ", ".join(markers[:-1]) + " and " + markers[-1]


def check_groupable(spec: TaskSpec) -> None:
    """Grouping the markers is only meaningful when they are interchangeable (one role, several)."""
    if len(spec.roles) < 2 or len(set(spec.roles)) != 1:
        raise ValueError(
            f"--group-markers needs a task whose markers share one role; {spec.name} has roles "
            f"{list(spec.roles) or 'none'}"
        )


def group_examples(spec: TaskSpec, examples: list[str]) -> list[str]:
    """The examples that write the markers as the plain list, with the list as GROUP_TOKEN."""
    check_groupable(spec)
    listed = marker_list(spec)
    return [ex.replace(listed, GROUP_TOKEN) for ex in examples if ex.count(listed) == 1]


def expand_group(spec: TaskSpec, text: str) -> str:
    """A grouped reply back in the task's own markers (every GROUP_TOKEN becomes the list, so a
    reply that repeats it repeats the markers and fails validation)."""
    return text.replace(GROUP_TOKEN, marker_list(spec))


def _token_phrase(spec: TaskSpec, tokens: list[str] | None = None) -> str:
    tokens = required_tokens(spec) if tokens is None else tokens
    if not tokens:
        return ""
    if len(tokens) == 1:
        return tokens[0]
    return ", ".join(tokens[:-1]) + " and " + tokens[-1]


def marker_grammar(spec: TaskSpec, max_text: int | None = None) -> str:
    """A GBNF grammar for one line holding each of the task's markers and placeholders exactly once.

    Free text between them may not contain brackets, braces or newlines; markers keep ascending order
    (`[ref#1]` before `[ref#2]`), placeholders may go anywhere. The line may end with a newline so
    the usual stop string ends the reply. One rule per set of tokens already written (a trie, so the
    parse stays deterministic: the text never holds the first character of a token). `max_text`
    bounds each stretch of free text (GBNF `{0,N}`).
    """
    if max_text is not None and max_text < 1:
        raise ValueError(f"max_text must be a positive number of characters, got {max_text}")
    tokens = required_tokens(spec)
    markers = list(spec.markers)

    def allowed(done: frozenset[str]) -> list[str]:
        nxt = [m for m in markers if m not in done][:1]  # the lowest marker not yet written
        return nxt + [t for t in tokens if t not in markers and t not in done]

    rules: dict[frozenset[str], str] = {}
    todo = [frozenset()]
    while todo:
        done = todo.pop()
        if done in rules:
            continue
        choices = []
        for t in allowed(done):
            after = done | {t}
            choices.append(f"{json.dumps(t)} {_rule_name(after, tokens)}")
            todo.append(after)
        rules[done] = "text" + (f" ({' | '.join(choices)})" if choices else "")
    lines = ['root ::= s0 "\\n"?']
    for done in sorted(rules, key=lambda d: (len(d), int(_rule_name(d, tokens)[1:]))):
        lines.append(f"{_rule_name(done, tokens)} ::= {rules[done]}")
    lines.append("text ::= [^\\[\\]{}\\n]" + ("*" if max_text is None else f"{{0,{max_text}}}"))
    return "\n".join(lines) + "\n"


def _rule_name(done: frozenset[str], tokens: list[str]) -> str:
    return "s" + str(sum(1 << i for i, t in enumerate(tokens) if t in done))


def pick_examples(examples: list[str], k: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = list(examples)
    rng.shuffle(pool)
    return pool[: max(1, k)]


def completion_prompt(spec: TaskSpec, examples: list[str], tokens: list[str] | None = None) -> str:
    header = (
        f"Below is a numbered list of instructions for an image generator. Every instruction asks "
        f"it to {spec.description}"
    )
    phrase = _token_phrase(spec, tokens)
    if phrase:
        header += f", and every instruction contains {phrase} exactly once"
    lines = [header + ".", ""]
    lines += [f"{i + 1}. {ex}" for i, ex in enumerate(examples)]
    lines.append(f"{len(examples) + 1}.")
    return "\n".join(lines)


def chat_messages(
    spec: TaskSpec, examples: list[str], tokens: list[str] | None = None
) -> list[dict[str, str]]:
    phrase = _token_phrase(spec, tokens)
    rules = [
        f"Write one new instruction that asks the image generator to {spec.description}, "
        "with the same meaning as the examples but different wording."
    ]
    if phrase:
        rules.append(f"Copy {phrase} exactly as written, each exactly once.")
    rules.append("Add nothing else in square brackets or curly braces.")
    rules.append("Reply with the instruction only, on one line.")
    user = "Examples:\n" + "\n".join(f"- {ex}" for ex in examples) + "\n\n" + " ".join(rules)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def request_body(
    route: str, spec: TaskSpec, examples: list[str], sampling: Sampling, seed: int
) -> dict:
    """The JSON body (without `model`) of one request."""
    tokens = None
    if sampling.group_markers:
        if sampling.grammar is not None:
            raise ValueError("--group-markers and --grammar cannot be combined")
        examples = group_examples(spec, examples)
        if not examples:
            raise ValueError(
                f"--group-markers: no accepted {spec.name} template writes its markers as "
                f"{marker_list(spec)!r}; accept one first"
            )
        tokens = [GROUP_TOKEN] + [f"{{{p}}}" for p in spec.placeholders]
    shots = pick_examples(examples, sampling.n_shots, seed // max(1, sampling.shuffle_every))
    body: dict = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": seed,
    }
    if route == "completion":
        body["prompt"] = completion_prompt(spec, shots, tokens)
        body["stop"] = ["\n"]
    else:
        body["messages"] = chat_messages(spec, shots, tokens)
    if sampling.grammar == "gbnf":
        body["extra_body"] = {
            sampling.grammar_field: marker_grammar(spec, sampling.grammar_max_text)
        }
    elif sampling.grammar is not None:
        raise ValueError(f"unknown grammar kind {sampling.grammar!r} (known: gbnf)")
    return body


def prompt_hash(body: dict) -> str:
    """sha256 of the prompt text (or the messages) alone, sampling excluded."""
    if "prompt" in body:
        payload = body["prompt"]
    else:
        payload = "\n".join(f"{m['role']}: {m['content']}" for m in body["messages"])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_LIST_PREFIX = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|[-*\u2022>])\s*")
_PREAMBLE = re.compile(r"^(?:sure|here|okay|ok|certainly|of course)\b", re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019*"


def _clean(line: str) -> str:
    line = _LIST_PREFIX.sub("", line.strip())
    line = line.strip()
    for _ in range(2):
        if len(line) >= 2 and line[0] in _QUOTES and line[-1] in _QUOTES:
            line = line[1:-1].strip()
    return line


def _reply_line(route: str, text: str) -> tuple[int, str]:
    """The index (in `text.splitlines()`) and cleaned text of the line `parse_reply` takes;
    (-1, "") when there is none."""
    if route == "completion":
        return 0, _clean(text.split("\n", 1)[0])
    for i, line in enumerate(text.splitlines()):
        cleaned = _clean(line)
        if not cleaned:
            continue
        if cleaned.endswith(":") or (_PREAMBLE.match(cleaned) and ":" in cleaned):
            continue
        return i, cleaned
    return -1, ""


def parse_reply(route: str, text: str) -> str:
    """The rephrasing in a model's reply (may be empty). Nothing is fixed up but framing:
    list numbers, surrounding quotes and, for chat, a leading preamble line."""
    return _reply_line(route, text)[1]


def reply_was_cut(route: str, text: str, finish_reason: str | None) -> bool:
    """True when generation stopped at max_tokens (`finish_reason == "length"`) inside the line
    `parse_reply` takes: that line is unfinished, however valid its markers look. A line that
    ended before the limit (a later line was being written) is whole."""
    if finish_reason != "length":
        return False
    i, line = _reply_line(route, text)
    if not line:
        return False
    if route == "completion":
        return "\n" not in text
    return i == len(text.splitlines()) - 1 and not text.endswith(("\n", "\r"))
