"""Pure per-record functions: no Beam, no I/O."""
