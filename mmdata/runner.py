"""Running a Beam pipeline: options, default runner, result summary."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import shlex
import shutil
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.runner import PipelineRunner

from mmdata.beam_worker import is_direct
from mmdata.errors import RunnerUnavailableError

log = logging.getLogger("mmdata")


class _ViewCachingOptions(PipelineOptions):
    """PipelineOptions whose `view_as` returns one view per options class.

    Beam calls `view_as` a few times per transform while it builds a graph (226 times for the ingest
    job), and each call parses the flags again with a new argparse parser: 0.07-0.12 s of each job's
    graph construction. Views of one options object share its values (`_all_options`: a value set
    through any view is seen by all), so one view per class behaves the same.
    """

    def view_as(self, cls: type[Any]) -> Any:
        views = self.__dict__.setdefault("_mmdata_views", {})
        view = views.get(cls)
        if view is None:
            view = views[cls] = super().view_as(cls)
        return view


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """Beam options from the pass-through arguments; DirectRunner unless `--runner` says otherwise."""
    opts = _ViewCachingOptions(list(beam_args or []))
    std = opts.view_as(StandardOptions)
    if not std.runner:
        std.runner = "DirectRunner"
    direct = opts.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading" and (direct.direct_num_workers or 1) != 1:
        # Seen with apache-beam 2.77: per-stage counts off by one or two between runs (the accounting
        # check refused those runs); on 2026-11-22, with counts computed differently, 1 demo run in 12
        # still failed with a RuntimeError raised in a DoFn (cause not pinned down). multi_processing
        # gives the same bytes as one worker.
        raise ValueError(
            "--direct_running_mode=multi_threading with several workers gives inconsistent counts in "
            "this Beam version; use --direct_running_mode=multi_processing"
        )
    if direct.direct_running_mode == "multi_processing" and is_direct(std.runner):
        quiet_worker_logs(opts)
        from mmdata.beam_worker import worker_zygote

        worker_zygote()  # starts importing while the job's graph is built
    if "DaskRunner" in str(std.runner):
        from mmdata.dask_compat import patch_dask_runner

        patch_dask_runner()
    return opts


# Beam's own INFO lines in each worker process (channels opened, harness starting and exiting: about 20
# per worker and job) say nothing to a user; mmdata's progress lines stay at INFO.
WORKER_LOG_OVERRIDES = {"apache_beam": "WARNING", "__main__": "WARNING"}


def quiet_worker_logs(opts: PipelineOptions) -> None:
    """Beam's loggers at WARNING in local worker processes, unless the user set worker log levels."""
    harness = opts.view_as(WorkerOptions)
    if (
        harness.default_sdk_harness_log_level is None
        and harness.sdk_harness_log_level_overrides is None
    ):
        harness.sdk_harness_log_level_overrides = dict(WORKER_LOG_OVERRIDES)


# Beam's state sampler (the per-bundle thread that attributes processing time to steps) sleeps in steps
# growing to 200 ms, and ending a bundle joins that thread: each bundle waits for its sampler's current
# sleep, up to 200 ms. On the bench-ingest corpus (3,000 images, 768 px, 1 worker) the job took a median
# 3.89 s with 200 ms and 3.52 s with 10 ms (6 interleaved runs each, 2026-12-02). At 10 ms the wait is
# negligible and the thread wakes 100 times a second, which costs nothing measurable; the timings it
# samples only get finer.
STATE_SAMPLING_PERIOD_MS = 10


def shorten_state_sampling(period_ms: int = STATE_SAMPLING_PERIOD_MS) -> bool:
    """Make the state samplers Beam's bundle processors create in this process sample every
    `period_ms` (their default, 200 ms, is a constructor default, so it is changed there). Only
    while it is Beam's own default (a Beam version that changed it is left alone). Returns whether
    the period is now `period_ms`."""
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    defaults = init.__defaults__
    if defaults == (period_ms,):
        return True
    if defaults != (statesampler.DEFAULT_SAMPLING_PERIOD_MS,) or defaults != (200,):
        return False
    init.__defaults__ = (period_ms,)
    return True


class LocalDirectRunner(PipelineRunner):
    """Beam's DirectRunner without its first try on PrismRunner.

    Since Beam 2.6x, `DirectRunner` first tries to run a batch pipeline on Prism, which downloads a
    Go binary from GitHub at run time (and, offline, logs the failure and falls back). mmdata
    fetches nothing unless the user configured it, and its DirectRunner figures and tests are
    for the FnApiRunner, so "DirectRunner" here means what Beam runs after that try: the
    FnApiRunner (honouring `--direct_num_workers` / `--direct_running_mode`), or the bundle-based
    runner for the streaming-only primitives the FnApiRunner lacks. Ask for Prism with
    `--runner=PrismRunner`.
    """

    def is_fnapi_compatible(self) -> bool:
        return BundleBasedDirectRunner.is_fnapi_compatible()

    def run_pipeline(self, pipeline: beam.Pipeline, options: PipelineOptions) -> Any:
        import itertools

        from apache_beam.internal.util import ArgumentPlaceholder
        from apache_beam.pipeline import PipelineVisitor
        from apache_beam.testing.test_stream import TestStream
        from apache_beam.transforms import userstate
        from apache_beam.transforms.core import CombineValuesDoFn
        from apache_beam.transforms.timeutil import TimeDomain

        class _NeedsBundleRunner(PipelineVisitor):
            """What Beam's DirectRunner sends to the bundle-based runner instead of the FnApiRunner
            (same checks as its `_FnApiRunnerSupportVisitor`)."""

            found = False

            def visit_transform(self, applied) -> None:  # noqa: ANN001
                t = applied.transform
                if isinstance(t, TestStream):
                    self.found = True
                if isinstance(t, beam.ParDo):
                    dofn = t.dofn
                    if isinstance(dofn, CombineValuesDoFn):
                        args, kwargs = t.raw_side_inputs
                        if any(
                            isinstance(a, ArgumentPlaceholder)
                            for a in itertools.chain(args, kwargs.values())
                        ):
                            self.found = True
                    if userstate.is_stateful_dofn(dofn):
                        _, timers = userstate.get_dofn_specs(dofn)
                        if any(tm.time_domain == TimeDomain.REAL_TIME for tm in timers):
                            self.found = True

        shorten_state_sampling()  # this process's bundles (in_memory); workers do it at start-up
        visitor = _NeedsBundleRunner()
        pipeline.visit(visitor)
        if visitor.found:
            return BundleBasedDirectRunner().run_pipeline(pipeline, options)
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
        )
        runner = _fn_api_runner_class()(provision_info=info)
        with _in_process_state_cache(options):
            return runner.run_pipeline(pipeline, options)


@contextlib.contextmanager
def _in_process_state_cache(options: PipelineOptions) -> Any:
    """The in-process (in_memory) worker's state cache off, as Beam's worker processes have it, unless
    `--experiments=state_cache_size=N` asks for one.

    Beam weighs each value it caches with `objsize`, which walks the globals of every loaded module on
    each call: 1-2 ms a side-input or state read, about 160 reads a bench-ingest job, 0.2-0.3 s of CPU of
    its 3.5 s (2026-12-02, 4 interleaved runs each: 3.49-3.96 s with the cache, 3.32-3.50 s without).
    The in-process runner serves state from memory anyway; the same shards come out either way.
    """
    from apache_beam.options.pipeline_options import DebugOptions
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if options.view_as(DebugOptions).lookup_experiment("state_cache_size") is not None:
        yield
        return
    before = worker_handlers.STATE_CACHE_SIZE_MB
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    try:
        yield
    finally:
        worker_handlers.STATE_CACHE_SIZE_MB = before


@functools.cache
def _fn_api_runner_class() -> type:
    """Beam's FnApiRunner whose local worker processes (multi_processing) start through
    `mmdata.beam_worker`: Beam's own worker, with its start-up chatter kept off the terminal."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    from mmdata.beam_worker import BEAM_MODULE, MODULE, VIA_FLAG, worker_zygote

    class FnApiRunner(fn_runner.FnApiRunner):
        # `run_pipeline` sets `_default_environment` from --direct_running_mode; the setter swaps the
        # worker module in the command line it builds, leaving everything else as Beam made it.
        @property
        def _default_environment(self) -> Any:
            return self._mmdata_environment

        @_default_environment.setter
        def _default_environment(self, env: Any) -> None:
            if isinstance(env, SubprocessSDKEnvironment) and env.command_string.endswith(
                f" -m {BEAM_MODULE}"
            ):
                env.command_string = env.command_string[: -len(BEAM_MODULE)] + MODULE
                zygote = worker_zygote()
                if zygote is not None:  # workers forked from it (warm start), not started cold
                    env.command_string += f" {VIA_FLAG} {shlex.quote(zygote.socket)}"
                    log.debug("local workers forked from the zygote, pid %d", zygote.proc.pid)
                else:
                    log.debug(
                        "local workers started cold (%s=0 or not Linux)", "MMDATA_WORKER_ZYGOTE"
                    )
            self._mmdata_environment = env

    return FnApiRunner


class _Pipeline(beam.Pipeline):
    """A Pipeline that, on `LocalDirectRunner` in batch mode, skips the test round trip through the
    Runner API protos that `Pipeline.run` makes for runners it does not know to use the Fn API.

    Beam skips it for its own DirectRunner (by class name); ours runs the same FnApiRunner, which
    translates the graph to protos once anyway, so the round trip only added about 0.2 s to each job.
    """

    def run(self, test_runner_api: bool | str = "AUTO") -> Any:
        if (
            test_runner_api == "AUTO"
            and isinstance(self.runner, LocalDirectRunner)
            and not self._options.view_as(StandardOptions).streaming
        ):
            test_runner_api = False
        if isinstance(self.runner, LocalDirectRunner):
            return super().run(test_runner_api)
        try:
            return super().run(test_runner_api)
        except ImportError as exc:  # e.g. DataflowRunner without apache-beam[gcp]
            raise _runner_import_error(self._options, exc) from exc


def _runner_import_error(opts: PipelineOptions, exc: ImportError) -> RunnerUnavailableError:
    """A runner's missing module (Beam raises ImportError on creating or running it) as one line."""
    runner = opts.view_as(StandardOptions).runner
    extra = _RUNNER_EXTRAS.get(_runner_key(runner), (None, None))[1]
    how = (
        f"install it with {_beam_extra(extra)}"
        if extra
        else "install the Beam extra that runner needs (apache-beam[...])"
    )
    return RunnerUnavailableError(f"--runner={runner} is not available here ({exc}): {how}")


def local_runner(opts: PipelineOptions) -> PipelineRunner | None:
    """The runner object to build a pipeline with: `LocalDirectRunner` for the DirectRunner (the
    default), None (Beam resolves `--runner`) for any other runner."""
    return LocalDirectRunner() if is_direct(opts.view_as(StandardOptions).runner) else None


def unknown_beam_args(args: list[str]) -> list[str]:
    """The arguments no Beam PipelineOptions class knows (typos would otherwise be dropped silently)."""
    import argparse

    try:  # register the Dask runner's options when it is installed
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError:
        pass
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    seen: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        try:
            cls._add_argparse_args(parser)  # noqa: SLF001 - how Beam itself collects its options
        except argparse.ArgumentError:
            pass
    _, unknown = parser.parse_known_args(args)
    return [a for a in unknown if a.startswith("-")]


_SECRET_WORDS = (
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "access_key",
    "api_key",
    "apikey",
    "private_key",
    "auth",
)


def redact_args(args: list[str] | None) -> list[str]:
    """`args` with the values of secret-looking options (`--s3_secret_access_key=...`,
    `--aws_session_token ...`: names holding secret, password, token, credential, access_key, api_key,
    private_key or auth) replaced by `***`, for logs."""
    out: list[str] = []
    hide_next = False
    for a in args or []:
        if hide_next and not a.startswith("-"):
            out.append("***")
            hide_next = False
            continue
        hide_next = False
        name, eq, _ = a.partition("=")
        secret = a.startswith("-") and any(
            w in name.lower().replace("-", "_") for w in _SECRET_WORDS
        )
        if secret and eq:
            out.append(f"{name}=***")
        else:
            out.append(a)
            hide_next = secret
    return out


# Runners whose workers run elsewhere (their own machines or containers) and so need mmdata installed.
_REMOTE_RUNNERS = ("dataflowrunner", "flinkrunner", "sparkrunner", "portablerunner", "dataflow")
# Options that give such workers mmdata: an image holding it, or packages Beam stages for them.
_PACKAGING = ("sdk_container_image", "setup_file", "extra_packages", "requirements_file")


def packaging_problem(opts: PipelineOptions) -> str | None:
    """Why a remote runner's workers would not have mmdata (they fail on their first bundle, minutes
    into the job, importing it), or None: the runner is local, LOOPBACK (workers in this process), or
    one of --sdk_container_image / --setup_file / --extra_package / --requirements_file is given."""
    runner = str(opts.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1].lower()
    if runner not in _REMOTE_RUNNERS:
        return None
    everything = opts.get_all_options(drop_default=True)
    if str(everything.get("environment_type") or "").upper() == "LOOPBACK":
        return None
    if any(everything.get(o) for o in _PACKAGING):
        return None
    return (
        f"the {opts.view_as(StandardOptions).runner} workers need mmdata and its locked dependencies "
        "installed, and none of --sdk_container_image, --setup_file, --extra_package or "
        "--requirements_file is given: `make dist` writes the wheel and requirements.txt for a worker "
        'image (README: "Running on a cluster")'
    )


def _runner_key(runner: Any) -> str:
    """`--runner`'s class name, lower case, with "runner": "dataflow", "DataflowRunner" and
    "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner" are all "dataflowrunner"."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    key = name.rsplit(".", 1)[-1].lower()
    return key if key.endswith("runner") else key + "runner"


def _beam_extra(extra: str) -> str:
    return f"`uv pip install 'apache-beam[{extra}]=={beam.__version__}'` (the Beam version here)"


# Runners that Beam imports only when asked for, and the Beam extra that brings what they import.
_RUNNER_EXTRAS: dict[str, tuple[str, str]] = {
    "dataflowrunner": ("apache_beam.runners.dataflow.internal.apiclient", "gcp"),
    "daskrunner": ("apache_beam.runners.dask.dask_runner", "dask"),
}
# Runners that start a Java job server from a jar unless --job_endpoint names a running one.
_JOB_SERVER_RUNNERS = ("flinkrunner", "sparkrunner")


def _job_server_jar_problem(opts: PipelineOptions, key: str) -> str | None:
    """Why the Flink/Spark job server jar is not here, or None: a --flink_job_server_jar /
    --spark_job_server_jar that exists (or is a URL the user asked Beam to fetch), or the jar Beam
    would use already in its jar cache. Beam would download the default jar from Maven Central at
    run time; mmdata refuses that rather than fetch something the user did not configure."""
    from apache_beam.options.pipeline_options import (
        CrossLanguageOptions,
        FlinkRunnerOptions,
        JobServerOptions,
        SparkRunnerOptions,
    )
    from apache_beam.utils.subprocess_server import JavaJarServer

    if key == "flinkrunner":
        from apache_beam.runners.portability.flink_runner import FlinkJarJobServer as Server

        given, flag = (
            opts.view_as(FlinkRunnerOptions).flink_job_server_jar,
            "--flink_job_server_jar",
        )
    else:
        from apache_beam.runners.portability.spark_runner import SparkJarJobServer as Server

        given, flag = (
            opts.view_as(SparkRunnerOptions).spark_job_server_jar,
            "--spark_job_server_jar",
        )
    if given:
        if os.path.exists(given) or "://" in given:
            return None  # a local jar, or a URL the user gave Beam to fetch
        return f"{flag}={given} does not exist"
    # the jar Beam would use (with any --beam_services replacement), and where it caches downloads
    with JavaJarServer.beam_services(opts.view_as(CrossLanguageOptions).beam_services):
        try:
            url = Server(opts).path_to_jar()
        except (RuntimeError, ValueError) as exc:  # e.g. a Spark version Beam no longer supports
            return str(exc)
    if os.path.exists(url):
        return None  # a jar built from a Beam checkout, or a --beam_services replacement
    if "://" not in url:
        return f"the job server jar {url} does not exist"
    cache = opts.view_as(JobServerOptions).jar_cache_dir or JavaJarServer.JAR_CACHE
    cached = os.path.join(cache, os.path.basename(url))
    if os.path.exists(cached):
        return None
    return (
        f"its job server jar is not here (Beam would download {url} at run time; mmdata does not "
        f"fetch it unasked): put a copy (downloaded where there is network access) at {cached}, "
        f"or pass {flag}=PATH (or {flag}=URL to let Beam fetch it)"
    )


def runner_problem(opts: PipelineOptions) -> str | None:
    """Why the `--runner` the options name cannot run here, checked before anything runs (nothing
    is started or downloaded): one line naming the runner, what is missing and how to get it; None
    when nothing is known to be missing (the local DirectRunner always runs).

    DataflowRunner (and DaskRunner) need Beam's `gcp` (`dask`) extra installed; FlinkRunner and
    SparkRunner, unless --job_endpoint names a running job server, start one: a Java program (on
    PATH, or --job_server_java_launcher) from a jar that must be here (--flink_job_server_jar /
    --spark_job_server_jar, or Beam's jar cache); PortableRunner needs --job_endpoint."""
    from apache_beam.options.pipeline_options import (
        FlinkRunnerOptions,
        JobServerOptions,
        PortableOptions,
        SparkRunnerOptions,
    )

    runner = opts.view_as(StandardOptions).runner
    if is_direct(runner):
        return None
    key = _runner_key(runner)
    shown = f"--runner={runner if isinstance(runner, str) else type(runner).__name__}"
    if key in _RUNNER_EXTRAS:
        module, extra = _RUNNER_EXTRAS[key]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return (
                f"{shown} needs Beam's {extra!r} extra, which is not installed here ({exc}): "
                f"install it with {_beam_extra(extra)}"
            )
        return None
    job_endpoint = opts.view_as(PortableOptions).job_endpoint
    if key == "portablerunner":
        if job_endpoint:
            return None
        return (
            f"{shown} needs --job_endpoint=HOST:PORT, the address of a running Beam job server "
            "(Flink's, Spark's, ...); or use --runner=FlinkRunner / SparkRunner, which start one"
        )
    if key not in _JOB_SERVER_RUNNERS or job_endpoint:
        return None
    missing = []
    uber = (
        key == "flinkrunner"
        and opts.view_as(FlinkRunnerOptions).flink_submit_uber_jar
        and str(opts.view_as(FlinkRunnerOptions).flink_master).strip() not in ("[local]", "[auto]")
    ) or (key == "sparkrunner" and opts.view_as(SparkRunnerOptions).spark_submit_uber_jar)
    if not uber:  # the job server runs here, as a Java process
        java = opts.view_as(JobServerOptions).job_server_java_launcher or "java"
        if shutil.which(java) is None:
            missing.append(
                f"it starts Beam's job server, a Java program, and there is no {java!r} on PATH "
                "(install a Java 11+ runtime, e.g. `apt-get install openjdk-17-jre-headless`, or "
                "pass --job_server_java_launcher=PATH)"
            )
    if jar := _job_server_jar_problem(opts, key):
        missing.append(jar)
    if not missing:
        return None
    return (
        f"{shown} cannot start here: {'; and '.join(missing)}; or give --job_endpoint=HOST:PORT "
        "of a running job server"
    )


def check_runner(beam_args: list[str] | None) -> None:
    """Raise `RunnerUnavailableError` when `runner_problem` finds the runner cannot run here. Reads
    the arguments only (no worker is started), so a job calls it before it creates its output."""
    problem = runner_problem(_ViewCachingOptions(list(beam_args or [])))
    if problem:
        raise RunnerUnavailableError(problem)


def run_pipeline(
    build: Callable[[beam.Pipeline], Any],
    beam_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> None:
    """Build the graph with `build(p)` and run it to completion (or into the given test pipeline)."""
    if test_pipeline is not None:
        build(test_pipeline)
        return
    from mmdata.io.sourcebytes import clear_cache

    opts = pipeline_options(beam_args)
    if problem := runner_problem(opts):
        raise RunnerUnavailableError(problem)
    if problem := packaging_problem(opts):
        log.warning("%s", problem)
    try:
        try:
            p = _Pipeline(runner=local_runner(opts), options=opts)
        except ImportError as exc:  # Beam imports a runner's module when it creates it
            raise _runner_import_error(opts, exc) from exc
        with p:
            build(p)
    finally:
        clear_cache()  # the job's image bytes held in this process are not needed any more
    if "DaskRunner" in str(opts.view_as(StandardOptions).runner):
        _close_dask_client()


def _close_dask_client() -> None:
    """The Dask runner opens a client it never closes; close it so it does not outlive its cluster."""
    try:
        from distributed import default_client

        default_client().close()
    except (ImportError, ValueError):
        pass


def summarize(output: str) -> str:
    """A short human summary of a dataset's manifest."""
    from mmdata.io import paths

    m = json.loads(paths.read_text(paths.join(output, "manifest.json")))
    lines = [f"dataset: {output}"]
    order = m.get("stages", []) + sorted(set(m["counts"]) - set(m.get("stages", [])))
    for stage in order:
        c = m["counts"][stage]
        rej = ", ".join(f"{k}={v}" for k, v in c["rejected"].items()) or "none"
        lines.append(f"  {stage:<12} in={c['input']:<6} kept={c['kept']:<6} rejected: {rej}")
    lines.append(
        f"  shards: {len(m['shards'])}  samples: {m['totals']['samples']}  rejects: {m['totals']['rejects']}"
    )
    lines.append(f"  tasks: {m['tasks']}")
    if not m["totals"]["samples"]:
        reasons = sorted({r for c in m["counts"].values() for r in c["rejected"]})
        lines.append(
            "  warning: the dataset is empty: every input was rejected "
            f"({', '.join(reasons) or 'no reason recorded'}); see rejects.parquet"
        )
    return "\n".join(lines)
