"""`webdataset.TarWriter` without importing torch.

The `webdataset` package's `__init__` imports torch (about 2.7 s on these machines) for its loaders; every
Beam worker process that writes shards would pay that at start-up. The writer itself only needs the
package's `writer`, `gopen` and `utils` modules, so when `webdataset` is not imported yet they are loaded
from the installed package's folder under a private package name, without running its `__init__`. It is
the installed library's own code (same version, same bytes out: see tests/unit/test_wds_writer.py).
When `webdataset` is already imported (e.g. by the trainer), its `TarWriter` is used as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_PRIVATE = "_mmdata_webdataset"


def private_tarwriter() -> Any:
    """webdataset's `writer.TarWriter`, loaded without the package `__init__` (so without torch)."""
    if _PRIVATE not in sys.modules:
        spec = importlib.util.find_spec("webdataset")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("webdataset is not installed: run `make setup`")
        pkg = types.ModuleType(_PRIVATE)
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__package__ = _PRIVATE
        sys.modules[_PRIVATE] = pkg
    return importlib.import_module(f"{_PRIVATE}.writer").TarWriter


def tarwriter() -> Any:
    """The `TarWriter` class to use in this process."""
    wds = sys.modules.get("webdataset")
    if wds is not None and hasattr(wds, "TarWriter"):
        return wds.TarWriter
    return private_tarwriter()
