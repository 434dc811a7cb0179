"""Robustness benchmarks: suites, worst-case evaluation, attack-failure indicators, reports.

Owns: suite files (:mod:`~bastion.evaluation.suite`), what a run attacks
(:mod:`~bastion.evaluation.inputs`) and its typed state with the digests, JSON form and
shard merge (:mod:`~bastion.evaluation.state`), the per-sample worst-case runner with its
checkpoints and the re-check of every adversarial that counts
(:mod:`~bastion.evaluation.runner`), the attack-failure indicators, and the report
(``bastion.bench.report/1``: :mod:`~bastion.evaluation.report`, plots beside it). May
import the bottom layer, ``models`` and ``attacks``; never ``defenses``, ``access`` or
``cli`` (the access layer reads reports by their schema, not through this package).
Sharded runs: the layout, per-shard seeds and shard checkpoints
(:mod:`~bastion.evaluation.shards`), and the one driver that hands shards to an executor,
merges them with :meth:`RunState.merge` and computes the indicators once
(:mod:`~bastion.evaluation.executors`, with the local executor); the Ray executor lives in
``bastion.distributed``.
"""

from bastion.evaluation.bench import benchmark
from bastion.evaluation.executors import LocalExecutor, run_sharded
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.runner import run_suite
from bastion.evaluation.shards import ShardLayout, shard_seed
from bastion.evaluation.state import Fingerprint, Indicator, RunState, Unit
from bastion.evaluation.suite import AttackSpec, Suite, load_suite

__all__ = ["AttackSpec", "BenchInputs", "Fingerprint", "Indicator", "LocalExecutor", "RunState", "ShardLayout",
           "Suite", "Unit", "benchmark", "load_suite", "run_sharded", "run_suite", "shard_seed"]
