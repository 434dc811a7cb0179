"""The model repository: find bundles, serve only the verified ones, and swap them without a gap.

A repository is a folder of model bundles, each ``NAME/`` (one version: the one its
``bastion.toml`` names) or ``NAME/VERSION/``, with ``model.sig`` and, where the policy
asks, ``robustness.att.json`` inside. Every version goes through
:func:`bastion.access.model_trust.trusted_model` and is loaded from its verified private
copy; one that fails is not served, and the reason is kept for ``ready``, the metadata,
the index, the log, the audit log and the metrics.

Hot swap (``load``) verifies the new bytes first. A version that verifies replaces the
one it supersedes; one that fails leaves the old one serving. A request holds the
:class:`ServedModel` it resolved, so it finishes on that version even if a swap or an
unload happens meanwhile.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.access.model_trust import ModelRule, ModelsPolicy, trusted_model
from bastion.access.names import model_name_problem, version_problem
from bastion.access.safe_load import load_copy
from bastion.access.signing import DEFAULT_SIGNATURE_NAME
from bastion.errors import BastionError, ModelRefused
from bastion.serving.audit import AuditLog
from bastion.serving.batching import DynamicBatcher
from bastion.serving.detector import ServingDetector, calibration_data
from bastion.serving.http import HttpError
from bastion.serving.inputs import TensorSpec
from bastion.serving.metrics import GatewayMetrics

log = logging.getLogger("bastion.serve")
META_FILE = "bastion.toml"
PLATFORM = "pytorch_bastion"


@dataclass(frozen=True)
class Refusal:
    name: str
    version: str | None  # None: a NAME/ bundle whose version could not be read from verified bytes
    kind: str  # the check that said no (bastion.errors.ModelRefused.kind)
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "check": self.kind, "reason": self.reason}


class ServedModel:
    """One verified, loaded model version, with its batcher and (optionally) its detector."""

    def __init__(self, name: str, version: str, module: torch.nn.Module, meta: Any, rule: ModelRule,
                 trust: dict[str, Any], spec: TensorSpec, detector: ServingDetector | None, executor: Executor,
                 metrics: GatewayMetrics, device: str):
        self.name, self.version, self.module, self.meta, self.rule = name, version, module, meta, rule
        self.trust, self.spec, self.detector, self.device = trust, spec, detector, device
        self.loaded_at = time.time()
        batch_seconds = metrics.inference_seconds.labels(name, version)
        batch_rows = metrics.batch_size.labels(name, version)
        self.flag_counter = metrics.detector_flags.labels(name, version, rule.detector)

        def on_batch(rows: int, seconds: float) -> None:
            batch_rows.observe(rows)
            batch_seconds.observe(seconds)

        self.batcher = DynamicBatcher(self._forward, executor, max_batch=rule.max_batch,
                                      max_delay=rule.max_delay_ms / 1000.0, on_batch=on_batch)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch.inference_mode():
            batch = torch.from_numpy(x).to(self.device)
            if self.detector is None:
                return self.module(batch).float().cpu().numpy(), None
            logits, scores = self.detector(batch)
            return logits.float().cpu().numpy(), scores.float().cpu().numpy()

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        sanitizer = (self.meta.sanitizer or {}).get("name") if self.meta.sanitizer else None
        return {"name": self.name, "versions": versions, "platform": PLATFORM, **self.spec.metadata(),
                "bastion": {"ready": True, "version": self.version, **self.trust, "sanitizer": sanitizer,
                            "detector": self.detector.describe() if self.detector else None,
                            "classes": list(self.meta.classes),
                            "batching": {"max_batch": self.rule.max_batch, "max_delay_ms": self.rule.max_delay_ms}}}


@dataclass
class ModelEntry:
    """Everything known about one model name."""

    served: dict[str, ServedModel] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)  # from the latest load of this name
    unloaded: bool = False

    @property
    def latest(self) -> ServedModel | None:
        if not self.served:
            return None
        return self.served[max(self.served, key=_version_order)]

    def why_not(self) -> str:
        if self.unloaded:
            return "unloaded by an admin request (POST /v2/repository/models/NAME/load serves it again)"
        if self.refusals:
            return "; ".join(r.reason if r.version is None else f"version {r.version}: {r.reason}"
                             for r in self.refusals)
        return "not loaded"


@dataclass(frozen=True)
class LoadReport:
    name: str
    loaded: tuple[str, ...]
    kept: tuple[str, ...]  # old versions still serving because their new bytes were refused
    refused: tuple[Refusal, ...]


def _version_order(version: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[._-]", version))


class ModelRepository:
    def __init__(self, root: str | Path, policy: ModelsPolicy | None, *, executor: Executor, metrics: GatewayMetrics,
                 audit: AuditLog, device: str = "cpu", max_rows: int = 1024, max_elements: int = 4 * 1024 * 1024):
        self.root = Path(root)
        self.policy = policy
        self.executor, self.metrics, self.audit, self.device = executor, metrics, audit, device
        self.max_rows, self.max_elements = max_rows, max_elements
        self.entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()  # one load or unload at a time; readers never wait

    # -- discovery -------------------------------------------------------------------------
    def names_on_disk(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _candidates(self, name: str) -> tuple[bool, list[tuple[str | None, Path]], list[Refusal]]:
        """(single-version layout?, [(version or None, path)], refusals for unusable version folders)."""
        folder = self.root / name
        if (folder / META_FILE).exists() or (folder / DEFAULT_SIGNATURE_NAME).exists():
            return True, [(None, folder)], []
        found, bad = [], []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            problem = version_problem(sub.name)
            if problem:
                bad.append(Refusal(name, sub.name, "bad_version", problem))
            else:
                found.append((sub.name, sub))
        if not found and not bad:
            bad.append(Refusal(name, None, "no_bundle", f"{folder}: holds no model bundle ({META_FILE}) and no "
                                                        "version folders"))
        return False, found, bad

    # -- loading ---------------------------------------------------------------------------
    def load_all(self) -> list[LoadReport]:
        return [self.load(name) for name in self.names_on_disk()]

    def load(self, name: str) -> LoadReport:
        """Verify and load every version of ``name`` from disk (blocking: call it off the event loop)."""
        problem = model_name_problem(name)
        if problem:
            refusal = Refusal(name, None, "bad_name", problem)
            self._record_refusal(refusal)
            return LoadReport(name, (), (), (refusal,))
        with self._lock:
            if not (self.root / name).is_dir():
                raise HttpError(404, f"no model folder {name!r} in the repository {self.root}")
            single, candidates, refusals = self._candidates(name)
            fresh: dict[str, ServedModel] = {}
            for version, path in candidates:
                try:
                    model = self._load_version(name, version, path)
                except ModelRefused as exc:
                    refusals.append(Refusal(name, version, exc.kind, str(exc)))
                    continue
                except Exception as exc:  # a bug must not take the server down or serve the model
                    log.exception("loading %s version %s failed", name, version)
                    refusals.append(Refusal(name, version, "internal", f"internal error: {type(exc).__name__}: {exc}"))
                    continue
                fresh[model.version] = model
            entry = self.entries.setdefault(name, ModelEntry())
            old = entry.served
            if single:
                served = fresh or dict(old)
            else:
                on_disk = {v for v, _ in candidates}
                served = {v: fresh.get(v) or old[v] for v in on_disk if v in fresh or v in old}
            for version in set(old) - set(served):
                self.metrics.model_ready.labels(name, version).set(0)
            for version, model in served.items():
                self.metrics.model_ready.labels(name, version).set(1)
            entry.served, entry.refusals, entry.unloaded = served, refusals, False
            self._count_served()
            for model in fresh.values():
                log.info("serving %s version %s (%s)", name, model.version, model.trust["model_digest"])
                self.audit.write({"event": "load", "model": name, "version": model.version, "decision": "allow",
                                  "digest": model.trust["model_digest"], "signer_key_hint": model.trust["signer_key_hint"],
                                  "reason": "verified: signature" + (" and attestation" if model.trust["robustness"]
                                                                     else "")})
            for refusal in refusals:
                self._record_refusal(refusal, kept=refusal.version in served or (single and bool(served)))
            kept = tuple(v for v in served if v not in fresh)
            return LoadReport(name, tuple(fresh), kept, tuple(refusals))

    def _record_refusal(self, refusal: Refusal, kept: bool = False) -> None:
        note = " (the version loaded before keeps serving)" if kept else ""
        log.warning("not serving %s%s: %s%s", refusal.name, f" version {refusal.version}" if refusal.version else "",
                    refusal.reason, note)
        self.metrics.model_refusals.labels(refusal.name, refusal.kind).inc()
        self.audit.write({"event": "refuse", "model": refusal.name, "version": refusal.version, "decision": "deny",
                          "check": refusal.kind, "reason": refusal.reason + note})

    def _load_version(self, name: str, version: str | None, path: Path) -> ServedModel:
        if self.policy is None:
            raise ModelRefused("not_in_policy", "the policy has no [models] section: it trusts no model signer, "
                                                "so no model is served")
        with trusted_model(path, self.policy, name) as trusted:
            try:
                loaded = load_copy(trusted.copy, device=self.device)
            except BastionError as exc:
                raise ModelRefused("load", str(exc)) from None
            meta = loaded.meta
            if meta is None:
                raise ModelRefused("load", f"{path}: not a model bundle (no {META_FILE})")
            version = version or str(meta.version)
            problem = version_problem(version)
            if problem:
                raise ModelRefused("bad_version", f"{path / META_FILE}: version: {problem}")
            rule = trusted.rule
            detector = None
            if rule.detector != "off":
                data = calibration_data(trusted.copy, rule, meta)
                detector = ServingDetector(loaded.module, rule.detector, rule.detector_fpr,
                                           _on_device(data, self.device), rule.calibration_samples, meta.bounds)
            validation = (meta.sanitizer or {}).get("validation") or {}
            spec = TensorSpec(tuple(meta.input_shape), int(meta.num_classes), tuple(meta.bounds),
                              clamps_out_of_range=validation.get("out_of_range") == "clamp",
                              max_rows=self.max_rows, max_elements=self.max_elements, detector=detector is not None)
            return ServedModel(name, version, loaded.module, meta, rule, trusted.describe(), spec, detector,
                               self.executor, self.metrics, self.device)

    def unload(self, name: str) -> list[str]:
        with self._lock:
            entry = self.entries.get(name)
            if entry is None:
                raise HttpError(404, f"no model named {name!r} in the repository")
            versions = sorted(entry.served)
            for version in versions:
                self.metrics.model_ready.labels(name, version).set(0)
            entry.served, entry.unloaded = {}, True
            self._count_served()
            self.audit.write({"event": "unload", "model": name, "version": ",".join(versions) or None,
                              "decision": "allow", "reason": "unloaded by an admin request"})
            return versions

    def _count_served(self) -> None:
        self.metrics.models_served.set(sum(len(e.served) for e in self.entries.values()))

    # -- lookups (event loop; never block) ----------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise HttpError(404, f"no model named {name!r} in the repository")
        return entry

    def resolve(self, name: str, version: str | None = None) -> ServedModel:
        """The version a request runs on (the latest when none is named); 404 unknown, 400 not served."""
        entry = self.entry(name)
        if version is None:
            model = entry.latest
            if model is None:
                raise HttpError(400, f"model {name!r} is not served: {entry.why_not()}")
            return model
        model = entry.served.get(version)
        if model is None:
            refused = [r for r in entry.refusals if r.version == version]
            if refused:
                raise HttpError(400, f"model {name!r} version {version!r} is not served: {refused[0].reason}")
            raise HttpError(404, f"model {name!r} has no version {version!r} (served: "
                                 f"{', '.join(sorted(entry.served, key=_version_order)) or 'none'})")
        return model

    def versions(self, name: str) -> list[str]:
        return sorted(self.entry(name).served, key=_version_order)

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model folder and loaded name, with its state and reason."""
        rows = []
        for name in sorted(set(self.names_on_disk()) | set(self.entries)):
            entry = self.entries.get(name)
            if entry is None:
                rows.append({"name": name, "state": "UNAVAILABLE",
                             "reason": "not loaded (POST /v2/repository/models/NAME/load)"})
                continue
            for version in sorted(entry.served, key=_version_order):
                rows.append({"name": name, "version": version, "state": "READY", "reason": ""})
            kept = " (the version loaded before keeps serving)" if entry.served else ""
            for refusal in entry.refusals:
                rows.append({"name": name, "version": refusal.version or "", "state": "UNAVAILABLE",
                             "reason": refusal.reason + kept})
            if entry.unloaded:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": entry.why_not()})
        return rows


def _on_device(data, device: str):
    from bastion.data import Dataset

    if device == "cpu":
        return data
    return Dataset(data.name, data.x.to(device), data.y.to(device), data.num_classes, data.bounds)
