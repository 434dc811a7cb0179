"""Robustness benchmarks: suites, worst-case evaluation, attack-failure indicators, reports.

Owns: suite files (:mod:`~bastion.evaluation.suite`), what a run attacks
(:mod:`~bastion.evaluation.inputs`) and its typed state with the digests, JSON form and
shard merge (:mod:`~bastion.evaluation.state`), the per-sample worst-case runner with its
checkpoints and the re-check of every adversarial that counts
(:mod:`~bastion.evaluation.runner`), the attack-failure indicators, the report
(``bastion.bench.report/1``: :mod:`~bastion.evaluation.report`, plots beside it, its
numbers and intervals in :mod:`~bastion.evaluation.report_format` and
:mod:`~bastion.evaluation.intervals`), reading reports back and comparing two
(:mod:`~bastion.evaluation.report_reader`, :mod:`~bastion.evaluation.compare`) and JUnit
XML (:mod:`~bastion.evaluation.junit`). May import the bottom layer, ``models`` and ``attacks``; never ``defenses``, ``access`` or
``cli`` (the access layer reads reports by their schema, not through this package). A
distributed executor builds on :class:`RunState` (``BenchInputs.shard`` + ``run_suite``
per shard, then :meth:`RunState.merge`): sharded runs have their layout, per-shard seeds
and shard checkpoints in :mod:`~bastion.evaluation.shards`, and the one driver that hands
shards to an executor, merges them and computes the indicators once in
:mod:`~bastion.evaluation.executors` (with the local executor); the Ray executor lives in
``bastion.distributed``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it. Imported on first use (PEP 562), so that the
#: torch-free parts (reading and comparing reports: ``compare``, ``intervals``, ``junit``,
#: ``report_format``, ``report_reader``) can be used without importing torch.
_EXPORTS = {"benchmark": "bench", "BenchInputs": "inputs", "run_suite": "runner", "Fingerprint": "state",
            "Indicator": "state", "RunState": "state", "Unit": "state", "AttackSpec": "suite", "Suite": "suite",
            "load_suite": "suite", "compare_runs": "compare", "LocalExecutor": "executors",
            "run_sharded": "executors", "ShardLayout": "shards", "shard_seed": "shards"}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from bastion.evaluation.bench import benchmark
    from bastion.evaluation.compare import compare_runs
    from bastion.evaluation.executors import LocalExecutor, run_sharded
    from bastion.evaluation.inputs import BenchInputs
    from bastion.evaluation.runner import run_suite
    from bastion.evaluation.shards import ShardLayout, shard_seed
    from bastion.evaluation.state import Fingerprint, Indicator, RunState, Unit
    from bastion.evaluation.suite import AttackSpec, Suite, load_suite


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
