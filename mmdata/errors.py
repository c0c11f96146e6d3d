"""Errors shared across mmdata."""

from __future__ import annotations


class UnknownNameError(KeyError, ValueError):
    """An unknown name (task, model, weights, annotator). A KeyError for lookups, and a ValueError so
    the command line reports it as a one-line error instead of a traceback."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunnerUnavailableError(RuntimeError):
    """The Beam runner `--runner` names cannot run here: its Beam extras (e.g. apache-beam[gcp]), Java
    or its job server jar are missing. The message names the runner, what is missing and how to get
    it; the command line reports it as one line (exit 1)."""
