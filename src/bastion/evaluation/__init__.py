"""Robustness benchmarks: suites, worst-case evaluation, attack-failure indicators, reports."""

from bastion.evaluation.bench import benchmark
from bastion.evaluation.runner import BenchInputs, run_suite
from bastion.evaluation.suite import AttackSpec, Suite, load_suite

__all__ = ["AttackSpec", "BenchInputs", "Suite", "benchmark", "load_suite", "run_suite"]
