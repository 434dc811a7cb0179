"""Robustness benchmarks: suites, worst-case evaluation, attack-failure indicators, reports.

Owns: suite files (:mod:`~bastion.evaluation.suite`), what a run attacks
(:mod:`~bastion.evaluation.inputs`) and its typed state with the digests, JSON form and
shard merge (:mod:`~bastion.evaluation.state`), the per-sample worst-case runner with its
checkpoints and the re-check of every adversarial that counts
(:mod:`~bastion.evaluation.runner`), the attack-failure indicators, and the report
(``bastion.bench.report/1``: :mod:`~bastion.evaluation.report`, plots beside it). May
import the bottom layer, ``models`` and ``attacks``; never ``defenses``, ``access`` or
``cli`` (the access layer reads reports by their schema, not through this package). A
distributed executor builds on :class:`RunState` (``BenchInputs.shard`` + ``run_suite``
per shard, then :meth:`RunState.merge`).
"""

from bastion.evaluation.bench import benchmark
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.runner import run_suite
from bastion.evaluation.state import Fingerprint, Indicator, RunState, Unit
from bastion.evaluation.suite import AttackSpec, Suite, load_suite

__all__ = ["AttackSpec", "BenchInputs", "Fingerprint", "Indicator", "RunState", "Suite", "Unit", "benchmark",
           "load_suite", "run_suite"]
