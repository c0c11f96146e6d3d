"""Benchmarks: each prints a figure and its ratio to a baseline measured in the same run."""

import logging

from mmdata.cli import DropImportNoise

# Beam warns on the root logger at import that the optional GCP client is absent: expected, and not a
# figure (the CLI drops the same lines).
logging.getLogger().addFilter(DropImportNoise())
