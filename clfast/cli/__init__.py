"""The ``clfast`` command line (``clfast info | bench | train``; also ``python -m clfast``).

Modules, in the order data flows: :mod:`~clfast.cli.main` (parser, dispatch, error reporting),
:mod:`~clfast.cli.setup` (options that depend on the strategy; benchmark, model, evaluator, strategy),
:mod:`~clfast.cli.train` (the loop over the stream), :mod:`~clfast.cli.resume` (``--checkpoint-dir`` /
``--resume``), :mod:`~clfast.cli.report` (text report, JSON/CSV outputs, plot); :mod:`~clfast.cli.argtypes` and
:mod:`~clfast.cli.errors` are the argument types and the one error convention every module uses.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
