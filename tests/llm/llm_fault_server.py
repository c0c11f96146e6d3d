"""A small OpenAI-compatible HTTP server that misbehaves on purpose, for fault-injection tests.

`FaultServer(script, default)` answers POST /v1/completions and /v1/chat/completions: the n-th
request takes the n-th action of `script` (then `default`). Actions:

  ("ok", text)        200 with a well-formed response whose first choice is `text`
  ("sleep", s, text)  wait s seconds, then as ok
  ("cut", text)       as ok, with finish_reason "length" (generation stopped by max_tokens)
  ("429", retry_after) 429 with a Retry-After header (None: no header)
  ("500",)            500 with an error body
  ("404model",)       404 "model not found"
  ("malformed",)      200, JSON content type, body that is not JSON
  ("empty",)          200 with "choices": []
  ("403",)            403 "access denied"
  ("quota",)          429 insufficient_quota (OpenAI's answer when the account has no credit)
  ("status", code)    `code` with an error body

GET /v1/models lists `models`; `models_reply` replaces that answer: (status, content_type, body) to
send, or ("sleep", s) to wait s seconds first (a hung endpoint). GET requests to /models are counted in
`models_requests`. With `require_key`, every request whose bearer token is not that
key gets 401 (and is not recorded), as an endpoint that needs an API key answers. Requests are recorded (time, path, body, headers) and the
maximum number of requests in flight at once is tracked.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    def __init__(
        self,
        script=(),
        default=("ok", "Draw {caption} now."),
        models=("fake-model",),
        require_key=None,
        models_reply=None,
    ):
        self.script = list(script)
        self.models_reply = models_reply
        self.models_requests = 0
        self.require_key = require_key
        self.default = default
        self.models = list(models)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code, body: bytes, ctype="application/json", headers=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _refused(self) -> bool:
                """True (after answering 401) when a key is required and this one is not it."""
                if outer.require_key is None:
                    return False
                if self.headers.get("Authorization") == f"Bearer {outer.require_key}":
                    return False
                n = int(self.headers.get("Content-Length", 0))
                self.rfile.read(n)
                self._send(
                    401, b'{"error": {"message": "invalid api key", "code": "invalid_api_key"}}'
                )
                return True

            def do_GET(self):
                if self._refused():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    with outer._lock:
                        outer.models_requests += 1
                    reply = outer.models_reply
                    if reply is not None and reply[0] == "sleep":
                        time.sleep(reply[1])
                    elif reply is not None:
                        self._send(reply[0], reply[2], ctype=reply[1])
                        return
                    data = {
                        "object": "list",
                        "data": [
                            {"id": m, "object": "model", "owned_by": "me"} for m in outer.models
                        ],
                    }
                    self._send(200, json.dumps(data).encode())
                else:
                    self._send(404, b'{"error": {"message": "no such path"}}')

            def do_POST(self):
                if self._refused():
                    return
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer._lock:
                    idx = len(outer.requests)
                    outer.requests.append(
                        {
                            "t": time.monotonic(),
                            "path": self.path,
                            "body": body,
                            "headers": dict(self.headers),
                        }
                    )
                    action = outer.script[idx] if idx < len(outer.script) else outer.default
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    outer._act(self, action, body)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _ok(self, handler, path: str, text: str, body: dict, finish: str = "stop") -> None:
        if path.endswith("/chat/completions"):
            data = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": finish,
                        "message": {"role": "assistant", "content": text},
                    }
                ],
            }
        else:
            data = {
                "id": "x",
                "object": "text_completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": finish, "text": text, "logprobs": None}],
            }
        handler._send(200, json.dumps(data).encode())

    def _act(self, handler, action, body: dict) -> None:
        kind = action[0]
        path = handler.path
        if kind == "ok":
            text = action[1](body) if callable(action[1]) else action[1]
            self._ok(handler, path, text, body)
        elif kind == "cut":
            self._ok(handler, path, action[1], body, finish="length")
        elif kind == "sleep":
            time.sleep(action[1])
            self._ok(handler, path, action[2], body)
        elif kind == "429":
            headers = {} if action[1] is None else {"Retry-After": str(action[1])}
            handler._send(
                429, b'{"error": {"message": "slow down", "type": "rate_limit"}}', headers=headers
            )
        elif kind == "500":
            handler._send(500, b'{"error": {"message": "internal error"}}')
        elif kind == "404model":
            handler._send(
                404,
                b'{"error": {"message": "The model does not exist", "code": "model_not_found"}}',
            )
        elif kind == "403":
            handler._send(403, b'{"error": {"message": "access denied"}}')
        elif kind == "quota":
            handler._send(
                429,
                b'{"error": {"message": "You exceeded your current quota, please check your plan '
                b'and billing details.", "type": "insufficient_quota", "param": null, '
                b'"code": "insufficient_quota"}}',
            )
        elif kind == "status":
            handler._send(action[1], b'{"error": {"message": "try again"}}')
        elif kind == "malformed":
            handler._send(200, b'{"choices": [{"text": "unterminated')
        elif kind == "empty":
            handler._send(
                200,
                json.dumps(
                    {
                        "id": "x",
                        "object": "text_completion",
                        "created": 0,
                        "model": "m",
                        "choices": [],
                    }
                ).encode(),
            )
        else:
            raise ValueError(kind)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
