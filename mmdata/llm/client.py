"""An OpenAI-compatible endpoint, called through the `openai` client, with caching and retries.

Both routes are supported: `chat` (chat.completions, for instruction-tuned models) and
`completion` (completions, for base models prompted with a few-shot list). Failures are sorted:

* retried with exponential backoff and jitter: timeouts, 408, 409, 429 (waiting what
  `Retry-After` says, capped), 5xx, dropped connections, malformed JSON and responses without
  choices (the `openai` client's own retry policy, plus bad responses);
* fatal for the whole run, with a message that says what to fix: endpoint unreachable, not an
  OpenAI-compatible API (its `/models` answers 200 with something other than a models list), model
  not served, authentication refused, the account's quota used up (a 429 `insufficient_quota`,
  which no wait cures).

The API key is only handed to the `openai` client: it is never part of a cache key, a log line,
an error message or a written file.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from mmdata.llm.cache import ResponseCache, request_hash

log = logging.getLogger(__name__)

ROUTES = ("chat", "completion")
# Statuses retried besides 429 and 5xx (as the openai client itself does): request timeout, conflict.
RETRY_STATUSES = (408, 409)


class LLMError(RuntimeError):
    """Base class; `fatal` errors stop a whole generation run."""

    fatal = False


class EndpointUnreachable(LLMError):
    fatal = True


class NotOpenAIEndpoint(LLMError):
    """The URL answers, but not as an OpenAI-compatible API (a web page, some other JSON)."""

    fatal = True


class ModelNotFound(LLMError):
    fatal = True


class AuthenticationFailed(LLMError):
    fatal = True


class QuotaExhausted(LLMError):
    """A 429 whose code is `insufficient_quota`: the account is out of credit, not rate limited."""

    fatal = True


class RequestFailed(LLMError):
    """One request failed for good (retries exhausted or refused); the run goes on without it."""


@dataclass
class EndpointConfig:
    """Where and how to call the LLM.

    Attributes:
        base_url: OpenAI-compatible base URL, ending in `/v1` for most servers.
        model: model id as the endpoint names it.
        route: `chat` or `completion`.
        api_key: secret; excluded from repr. Local servers accept any value.
        timeout: seconds per request.
        max_retries: retries per request for retryable failures.
        backoff_base, backoff_max: exponential backoff in seconds (jittered x0.5-1.5).
        max_retry_after: cap on a server's `Retry-After` wait, in seconds.
        kind: free label of the endpoint (e.g. `llama.cpp-local`) recorded in provenance.
        base_url_from: where base_url came from (`--base-url`, `MMDATA_LLM_BASE_URL`, ...), so
            that an error can say which setting to fix; None when not known.
        api_key_from: where api_key came from (`MMDATA_LLM_API_KEY`, `--api-key-file PATH`,
            `--api-key`), for the same reason; None when not known.
    """

    base_url: str
    model: str
    route: str = "chat"
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    max_retry_after: float = 60.0
    kind: str = "openai-compatible"
    base_url_from: str | None = None
    api_key_from: str | None = None

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, not {self.route!r}")
        if not self.base_url:
            raise ValueError("base_url is empty")


# Query parameters whose values are secrets (`?api_key=`, `?token=`, `?sig=` of a signed URL).
_SECRET_PARAM = re.compile(r"key|token|secret|sig|passw|auth|credential", re.IGNORECASE)
REDACTED = "***"
SNIPPET_BYTES = 160  # of a reply that is not what was expected, shown in the error


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL: the password of `user:password@host`, values of secret-looking
    query parameters."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    out = [password] if password else []
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if value and _SECRET_PARAM.search(name):
            out.append(value)
    return out


def redact_url(url: str) -> str:
    """`url` as it may be shown: a password in it and secret query values become `***`."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc
    if password:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}"
    query = parts.query
    if query and url_secrets(url):
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{urllib.parse.quote(k)}="
            + (REDACTED if v and _SECRET_PARAM.search(k) else urllib.parse.quote(v))
            for k, v in pairs
        )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


class RedactSecrets(logging.Filter):
    """A handler filter that writes `***` for each secret found in a record's message: the API key
    and the URL's secrets, in case a library (httpx logs each request's URL at INFO) prints them."""

    MIN_LEN = 4  # shorter strings would mask ordinary text

    def __init__(self, secrets: list[str | None]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= self.MIN_LEN}, key=len)[::-1]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        if any(s in msg for s in self.secrets):
            for s in self.secrets:
                msg = msg.replace(s, REDACTED)
            record.msg, record.args = msg, None
        return True


API_KEY_VARS = ("MMDATA_LLM_API_KEY", "OPENAI_API_KEY")


def api_key_env() -> tuple[str | None, str | None]:
    """The API key from the environment and the name of the variable it came from."""
    for var in API_KEY_VARS:
        if os.environ.get(var):
            return os.environ[var], var
    return None, None


def api_key_from_env() -> str | None:
    return api_key_env()[0]


@dataclass
class LLMResult:
    text: str
    key: str
    cached: bool
    finish_reason: str | None = None
    attempts: int = 1


def _retry_after_seconds(headers: Any) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _extract_text(route: str, resp: Any) -> tuple[str, str | None]:
    """Text and finish reason of the first choice; ValueError when the response has none."""
    if isinstance(resp, (str, bytes)):
        raise ValueError("response is not JSON")
    choices = getattr(resp, "choices", None)
    if not choices:
        raise ValueError("response has no choices")
    choice = choices[0]
    if route == "chat":
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
    else:
        text = getattr(choice, "text", None)
    if not isinstance(text, str):
        raise ValueError("first choice has no text")
    return text, getattr(choice, "finish_reason", None)


class LLMClient:
    """Thread-safe caller of one endpoint; counts requests actually sent in `requests_sent`."""

    def __init__(
        self,
        config: EndpointConfig,
        cache: ResponseCache | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.url = redact_url(config.base_url)  # the URL as messages show it
        self.cache = cache if cache is not None else ResponseCache(enabled=False)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.requests_sent = 0
        self.retries: dict[str, int] = {}
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "sk-no-key-required",
            timeout=config.timeout,
            max_retries=0,
        )

    # -- checks ----------------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """Model ids the endpoint serves; raises EndpointUnreachable / AuthenticationFailed, and
        NotOpenAIEndpoint when `/models` answers 2xx with something other than an OpenAI models
        list (`{"object": "list", "data": [{"id": ...}, ...]}`)."""
        last: Exception | None = None
        for attempt in range(3):
            try:
                raw = self._client.models.with_raw_response.list()
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                last = e
                self._sleep(self._backoff(attempt))
            except openai.AuthenticationError:
                raise AuthenticationFailed(self._auth_message(401)) from None
            else:
                return self._model_ids(raw.http_response)
        raise EndpointUnreachable(self._unreachable_message(last)) from None

    def _model_ids(self, resp: Any) -> list[str]:
        """The ids of an OpenAI models list (`resp`: the httpx response of GET /models)."""
        body = resp.content
        try:
            data = json.loads(body)
        except ValueError:
            problem = "not JSON"
        else:
            entries = data.get("data") if isinstance(data, dict) else None
            if not isinstance(data, dict):
                problem = f"a JSON {type(data).__name__}, not an object"
            elif not isinstance(entries, list):
                problem = 'no "data" list'
            elif data.get("object", "list") != "list":
                problem = f'"object" is {data.get("object")!r}, not "list"'
            elif not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in entries):
                problem = 'a "data" entry without a string "id"'
            else:
                return [m["id"] for m in entries]
        raise NotOpenAIEndpoint(self._not_openai_message(resp, problem)) from None

    def _not_openai_message(self, resp: Any, problem: str) -> str:
        """What came back instead of a models list: URL, status, content type and the first bytes,
        with the API key and the URL's secrets masked."""
        body = resp.content
        text = " ".join(body[:SNIPPET_BYTES].decode("utf-8", errors="replace").split())
        for secret in (self.config.api_key, *url_secrets(self.config.base_url)):
            if secret:
                text = text.replace(secret, REDACTED)
        if len(body) > SNIPPET_BYTES:
            text += "..."
        ctype = resp.headers.get("content-type") or "no content type"
        cfg = self.config
        if cfg.base_url_from and cfg.base_url_from.startswith("--"):
            where = f"the URL given with {cfg.base_url_from}"
        elif cfg.base_url_from:
            where = f"the URL set in ${cfg.base_url_from}"
        else:
            where = "the URL"
        return (
            f"{redact_url(str(resp.url))} answered HTTP {resp.status_code} with {ctype}, "
            f"{len(body)} bytes, that is not an OpenAI models list ({problem}): {text!r}; "
            f"{where} is not an OpenAI-compatible API: check the host, port and path "
            "(the base URL usually ends in /v1)"
        )

    def check_model(self) -> None:
        """Fail early, and clearly, if the endpoint is down, is not an OpenAI-compatible API, or
        does not serve the model.

        Endpoints that answer `/models` with an HTTP error (no listing) are let through (the first
        request will tell); a 2xx reply must be an OpenAI models list.
        """
        try:
            models = self.list_models()
        except LLMError:
            raise
        except openai.APIStatusError as e:
            log.warning(
                "%s has no usable /models listing (HTTP %d); not checking the model name",
                self.url,
                e.status_code,
            )
            return
        if models and self.config.model not in models:
            raise ModelNotFound(
                f"model {self.config.model!r} is not served at {self.url}; "
                f"it serves: {', '.join(models)} (pass one with --model)"
            )

    def _unreachable_message(self, err: Exception | None) -> str:
        cause = err.__cause__ if err is not None and err.__cause__ is not None else err
        cfg = self.config
        head = f"cannot reach the LLM endpoint at {self.url} ({type(cause).__name__}: {cause})"
        if cfg.base_url_from and cfg.base_url_from.startswith("--"):
            return (
                f"{head}; the URL given with {cfg.base_url_from} could not be reached: check that an "
                "OpenAI-compatible server is running there and that the host, port and path (usually "
                "ending in /v1) are right"
            )
        if cfg.base_url_from:
            return (
                f"{head}; the URL set in ${cfg.base_url_from} could not be reached: check that an "
                "OpenAI-compatible server is running there, or unset it to use the local server "
                "(`make llm-server-start`)"
            )
        return (
            f"{head}; start the local server with `make llm-server-start` or pass --base-url "
            "(or set MMDATA_LLM_BASE_URL) to a running OpenAI-compatible endpoint"
        )

    def _auth_message(self, status: int) -> str:
        """What a 401/403 reply means, and what to set. Names the variables, never the key."""
        cfg = self.config
        what = "refused the request" if status == 401 else f"denied access to model {cfg.model!r}"
        if not cfg.api_key:
            return (
                f"{self.url} {what} (HTTP {status}) and no API key is set: export "
                "MMDATA_LLM_API_KEY=<key> (or OPENAI_API_KEY), or pass --api-key-file PATH, with "
                "a key for this endpoint"
            )
        if status == 401:
            src = cfg.api_key_from
            if src and src.startswith("--api-key-file"):
                fix = f"the key was read from {src}: put a valid key in that file"
            elif src and not src.startswith("--"):
                fix = f"the key came from ${src}: set it to a valid key"
            else:
                fix = "set MMDATA_LLM_API_KEY (or OPENAI_API_KEY) to a valid key"
            return f"{self.url} refused the API key (HTTP 401); {fix}"
        return f"{self.url} {what} (HTTP 403); check that the API key may use this model"

    # -- requests --------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        base = min(self.config.backoff_max, self.config.backoff_base * (2**attempt))
        with self._lock:
            return base * self._rng.uniform(0.5, 1.5)

    def _count_retry(self, why: str) -> None:
        with self._lock:
            self.retries[why] = self.retries.get(why, 0) + 1

    def _send(self, body: dict[str, Any]) -> Any:
        with self._lock:
            self.requests_sent += 1
        if self.config.route == "chat":
            return self._client.chat.completions.create(model=self.config.model, **body)
        return self._client.completions.create(model=self.config.model, **body)

    def request(self, body: dict[str, Any]) -> LLMResult:
        """One request (from the cache when possible). Raises RequestFailed or a fatal LLMError."""
        cfg = self.config
        key = request_hash(cfg.route, cfg.model, body)
        hit = self.cache.get(key)
        if hit is not None:
            return LLMResult(hit["text"], key, True, hit.get("finish_reason"), 0)

        connection_failures = 0
        last_problem = "no attempt"
        for attempt in range(cfg.max_retries + 1):
            delay: float | None = None
            try:
                resp = self._send(body)
                text, finish = _extract_text(cfg.route, resp)
            except openai.APITimeoutError:
                last_problem = f"timed out after {cfg.timeout:g} s"
                self._count_retry("timeout")
            except openai.APIConnectionError as e:
                connection_failures += 1
                if connection_failures >= 3:
                    raise EndpointUnreachable(self._unreachable_message(e)) from None
                last_problem = "connection failed"
                self._count_retry("connection")
            except openai.RateLimitError as e:
                if "insufficient_quota" in (e.code, e.type):
                    raise QuotaExhausted(
                        f"{self.url} answered HTTP 429 insufficient_quota ({_short(e)}): the "
                        "account of this API key has no quota left; waiting will not help, check "
                        "its plan and billing (or use another key or endpoint)"
                    ) from None
                last_problem = "rate limited (HTTP 429)"
                self._count_retry("429")
                ra = _retry_after_seconds(e.response.headers if e.response else None)
                if ra is not None:
                    with self._lock:
                        delay = min(ra, cfg.max_retry_after) * self._rng.uniform(1.0, 1.1)
            except openai.InternalServerError as e:
                last_problem = f"server error (HTTP {e.status_code})"
                self._count_retry("5xx")
            except openai.AuthenticationError:
                raise AuthenticationFailed(self._auth_message(401)) from None
            except openai.PermissionDeniedError:
                raise AuthenticationFailed(self._auth_message(403)) from None
            except openai.NotFoundError as e:
                if "model" in str(e).lower():
                    raise ModelNotFound(
                        f"model {cfg.model!r} is not served at {self.url} (HTTP 404: "
                        f"{_short(e)}); pass a served model id with --model"
                    ) from None
                route_path = "chat/completions" if cfg.route == "chat" else "completions"
                raise LLMError(
                    f"{self.url}/{route_path} does not exist (HTTP 404); check that --base-url "
                    "ends with /v1 and that the endpoint supports the "
                    f"{cfg.route!r} route (--mode)"
                ) from None
            except openai.APIStatusError as e:
                if e.status_code not in RETRY_STATUSES:
                    # Other 4xx: this request is refused as it is; retrying will not help.
                    raise RequestFailed(f"HTTP {e.status_code}: {_short(e)}") from None
                last_problem = f"HTTP {e.status_code} ({_short(e)})"
                self._count_retry(str(e.status_code))
            except (json.JSONDecodeError, openai.APIResponseValidationError, ValueError) as e:
                last_problem = f"bad response ({_short(e)})"
                self._count_retry("bad_response")
            else:
                entry = {
                    "route": cfg.route,
                    "model": cfg.model,
                    "body": body,
                    "text": text,
                    "finish_reason": finish,
                }
                try:
                    self.cache.put(key, entry)
                except OSError as e:  # disk full, say: the reply is still used, only not cached
                    log.warning("response cache not written (%s): a rerun sends this again", e)
                return LLMResult(text, key, False, finish, attempt + 1)
            if attempt < cfg.max_retries:
                wait = delay if delay is not None else self._backoff(attempt)
                log.debug(
                    "request %s: %s; retry %d in %.2f s", key[:8], last_problem, attempt + 1, wait
                )
                self._sleep(wait)
        raise RequestFailed(f"{last_problem}; gave up after {cfg.max_retries + 1} attempts")


def _short(err: BaseException, limit: int = 200) -> str:
    msg = " ".join(str(err).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."
