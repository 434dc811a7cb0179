"""Read a robustness report leniently and keep what an attestation needs, in one fixed shape.

Reports come from ``bastion bench`` (headline numbers under ``summary``, per-eps
results under ``results``) and ``bastion attack --json``; their
exact layout may grow, so this reads several spellings and checks only the
fields a requirement can name:

    {"suite": str | None, "threat_models": [...], "n": int, "clean_accuracy": float,
     "robust_accuracy": [{"label": str, "eps": float | None, "accuracy": float}, ...],
     "flags": [str, ...]}        # the attack-failure indicators that were raised

``robust_accuracy`` may be a number, ``{eps: acc}``, ``{norm: {eps: acc}}``, or
a list of ``{"eps", "robust_accuracy"}`` entries (also found under ``results``).
"""

from __future__ import annotations

import math
from typing import Any

N_KEYS = ("n", "n_samples", "num_samples", "sample_count", "samples")
FLAG_KEYS = ("flags", "indicators", "attack_failure_flags", "attack_failure_indicators")
THREAT_KEYS = ("threat_models", "threat_model", "threats", "threat")
ACCURACY_KEYS = ("robust_accuracy", "accuracy")
_RAISED_KEYS = ("raised", "triggered", "flagged", "failed", "value")
_NAME_KEYS = ("key", "name", "flag", "indicator")
_RAISED_STATUSES = {"fired", "raised", "failed", "flagged", "triggered", "warning"}
_MAX_DEPTH = 6


def summarise_report(report: Any, source: str, error: type[Exception]) -> dict[str, Any]:
    """The fixed-shape summary of ``report``; raises ``error`` naming the missing or bad field.

    Fields are looked up in the report's ``summary`` object first (``bastion bench`` puts the
    headline numbers there), then at the top level.
    """
    if not isinstance(report, dict):
        raise error(f"{source}: a report must be a JSON object")
    summary = report.get("summary") if isinstance(report.get("summary"), dict) else {}

    def field(*keys: str) -> Any:
        return next((where[k] for k in keys for where in (summary, report) if k in where), None)

    n = field(*N_KEYS)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise error(f"{source}: needs the sample count as a positive integer 'n' (got {n!r})")
    clean = _fraction(field("clean_accuracy"), "clean_accuracy", source, error)
    results = report.get("results")
    per_eps = isinstance(results, list) and bool(results) and all(isinstance(r, dict) and "eps" in r for r in results)
    robust_source = results if per_eps else field("robust_accuracy", "results")
    if robust_source is None:
        raise error(f"{source}: needs 'robust_accuracy' (a number, {{eps: accuracy}}, or a list of results)")
    robust: list[dict[str, Any]] = []
    _collect_accuracy(robust_source, "", _as_eps(field("eps")), robust, source, error, 0)
    if not robust:
        raise error(f"{source}: 'robust_accuracy' holds no accuracy values")
    suite = field("suite")
    if isinstance(suite, dict):
        suite = suite.get("name")
    threats = field(*THREAT_KEYS)
    if threats is None and field("norm") is not None:
        threats = {"norm": field("norm"), "eps": sorted({e["eps"] for e in robust if e["eps"] is not None})}
    fired = summary.get("indicators_fired")
    return {
        "suite": suite if isinstance(suite, str) else None,
        "threat_models": threats if isinstance(threats, list) else ([] if threats is None else [threats]),
        "n": n,
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "flags": _raised_flags(fired if isinstance(fired, list) else field(*FLAG_KEYS)),
    }


def _fraction(value: Any, name: str, source: str, error: type[Exception]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{source}: needs '{name}' as a number between 0 and 1 (got {value!r})")
    if not 0.0 <= value <= 1.0:
        raise error(f"{source}: '{name}' must be a fraction between 0 and 1, got {value}")
    return float(value)


def _as_eps(key: Any) -> float | None:
    if isinstance(key, bool):
        return None
    try:
        value = float(key)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _collect_accuracy(obj: Any, label: str, eps: float | None, out: list, source: str, error, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise error(f"{source}: 'robust_accuracy' is nested too deeply")
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append({"label": label, "eps": eps, "accuracy": _fraction(obj, "robust_accuracy", source, error)})
    elif isinstance(obj, list):
        for item in obj:
            _collect_accuracy(item, label, eps, out, source, error, depth + 1)
    elif isinstance(obj, dict):
        accuracy_key = next((k for k in ACCURACY_KEYS if k in obj), None)
        if accuracy_key is not None:  # one result entry: {"eps": 0.3, "robust_accuracy": 0.9, ...}
            entry_eps = _as_eps(obj.get("eps")) if "eps" in obj else eps
            entry_label = str(obj.get("label", obj.get("norm", obj.get("attack", label))))
            _collect_accuracy(obj[accuracy_key], entry_label, entry_eps, out, source, error, depth + 1)
            return
        for key, value in obj.items():
            key_eps = _as_eps(key)
            if key_eps is not None:
                _collect_accuracy(value, label, key_eps, out, source, error, depth + 1)
            else:
                _collect_accuracy(value, f"{label}/{key}" if label else str(key), eps, out, source, error, depth + 1)
    else:
        raise error(f"{source}: 'robust_accuracy' holds {obj!r}, not a number")


def _raised_flags(flags: Any) -> list[str]:
    """Names of the indicators that fired; a flag whose value is false is not raised."""
    if flags is None:
        return []
    if isinstance(flags, str):
        return [flags]
    raised: list[str] = []
    if isinstance(flags, list):
        for item in flags:
            if isinstance(item, str):
                raised.append(item)
            elif isinstance(item, dict) and _is_raised(item):
                raised.append(str(next((item[k] for k in _NAME_KEYS if k in item), "unnamed")))
    elif isinstance(flags, dict):
        for name, value in flags.items():
            if _is_raised(value):
                raised.append(str(name))
    return sorted(set(raised))


def _is_raised(value: Any) -> bool:
    if isinstance(value, dict) and "status" in value:  # bastion bench: "fired" | "passed" | "skipped" ...
        return str(value["status"]).lower() in _RAISED_STATUSES
    if isinstance(value, dict):
        for key in _RAISED_KEYS:
            if key in value:
                return bool(value[key])
        return True
    if isinstance(value, list):
        return len(value) > 0
    return bool(value)
