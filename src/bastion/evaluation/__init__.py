"""Robustness benchmarks: suites, worst-case evaluation, attack-failure indicators, reports."""

from bastion.evaluation.bench import benchmark
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.runner import run_suite
from bastion.evaluation.state import Fingerprint, Indicator, RunState, Unit
from bastion.evaluation.suite import AttackSpec, Suite, load_suite

__all__ = ["AttackSpec", "BenchInputs", "Fingerprint", "Indicator", "RunState", "Suite", "Unit", "benchmark",
           "load_suite", "run_suite"]
