"""Which models may be served: the ``[models]`` section of a policy, and the one decision on a model.

    [models]
    signer_keys = ["keys/release.pub"]      # a model's signature must verify under one of these
    attester_keys = ["keys/eval.pub"]       # a required attestation must verify under one of these

    [[models.rules]]                        # first rule naming the model wins; unnamed models are refused
    models = ["mnist-cnn-robust"]           # names or glob patterns (bastion.access.names)
    require = "robust_accuracy[0.3] >= 0.85 and flags == 0"   # implies attestation_required
    attestation_required = true
    detector = "flag"                       # off | flag | reject (the serving-time detector)
    detector_fpr = 0.05                     # its false-positive rate on clean data
    calibration = "mnist"                   # clean data: mnist, digits, or an .npz (x[, y]) path
    max_batch = 32                          # dynamic batching: rows per forward pass
    max_delay_ms = 2.0                      #   and the longest a request waits for company

:func:`trusted_model` is the decision, for ``bastion verify --policy`` and the gateway
alike: the model's files are copied to a private directory, the copy is checked against
the signature under a trusted signer key, and (where the rule asks) the attestation must
verify under a trusted attester key, name the same digest and meet the requirement. A
refusal raises :class:`~bastion.errors.ModelRefused` whose ``kind`` says which check said
no. Whoever loads the model loads it from the verified copy, inside the context.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.access.attestation import Attestation, default_attestation_path
from bastion.access.envelope import key_hint
from bastion.access.names import model_matches, model_name_problem, model_pattern_problem
from bastion.access.requirements import check_requirement, parse_requirement
from bastion.access.safe_load import ModelTrust, verified_copy
from bastion.access.signing import default_signature_path, read_signature
from bastion.access.policy_reader import TableReader, resolve_path
from bastion.errors import BastionError, ConfigError, ModelRefused, UsageError, VerificationError

DETECTOR_MODES = ("off", "flag", "reject")
BUILTIN_CALIBRATION = ("mnist", "digits")
MODELS_KEYS = {"signer_keys", "attester_keys", "rules", "description"}
RULE_KEYS = {"models", "require", "attestation_required", "detector", "detector_fpr", "calibration",
             "calibration_samples", "max_batch", "max_delay_ms", "description"}


@dataclass(frozen=True)
class ModelRule:
    """What the policy asks of the models one rule names, and how they are served."""

    models: tuple[str, ...]
    require: str | None = None
    attestation_required: bool = False
    detector: str = "off"
    detector_fpr: float = 0.05
    #: ``mnist`` / ``digits`` (bundled test splits) or an absolute .npz path; None: see the gateway.
    calibration: str | None = None
    calibration_samples: int = 1000
    max_batch: int = 32
    max_delay_ms: float = 2.0

    def names(self, model: str) -> bool:
        return any(model_matches(pattern, model) for pattern in self.models)


@dataclass(frozen=True)
class ModelsPolicy:
    """The ``[models]`` section: trusted signer and attester keys, and the rules, in order."""

    signer_keys: tuple[Any, ...]
    attester_keys: tuple[Any, ...] = ()
    rules: tuple[ModelRule, ...] = ()
    source: str = "<policy>"

    def rule_for(self, model: str) -> ModelRule | None:
        """The first rule naming ``model`` (a valid model name), or None: not to be served."""
        return next((rule for rule in self.rules if rule.names(model)), None)


@dataclass(frozen=True)
class TrustedModel:
    """A model that passed every check of its rule; ``copy`` holds its verified bytes while the context is open."""

    name: str
    path: Path
    copy: Path
    rule: ModelRule
    digest: str  # sha256 over the signed file digests (the model-signing subject digest)
    hash_type: str
    files: int
    signer_hint: str
    attestation: Attestation | None = None
    attester_hint: str | None = None
    requirements_met: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        """What was verified, for people and for the gateway's metadata (no key material, only hints)."""
        robustness = None
        if self.attestation is not None:
            evaluation = self.attestation.evaluation
            robustness = {"attestation": self.attestation.attestation.name, "attester_key_hint": self.attester_hint,
                          "suite": evaluation["suite"], "n": evaluation["n"],
                          "clean_accuracy": evaluation["clean_accuracy"],
                          "robust_accuracy": evaluation["robust_accuracy"], "flags": evaluation["flags"],
                          "requirement": self.rule.require, "requirements_met": list(self.requirements_met)}
        return {"model_digest": f"sha256:{self.digest}", "hash_type": self.hash_type, "files": self.files,
                "signer_key_hint": self.signer_hint, "robustness": robustness}


@contextmanager
def trusted_model(path: str | Path, policy: ModelsPolicy, name: str | None = None) -> Iterator[TrustedModel]:
    """Decide whether the model at ``path`` may be served as ``name`` (default: the path's last part).

    Yields a :class:`TrustedModel` whose ``copy`` is the verified private copy (removed on exit);
    raises :class:`~bastion.errors.ModelRefused` naming the check that failed.
    """
    model = Path(path)
    name = model.resolve().name if name is None else name
    problem = model_name_problem(name)
    if problem:
        raise ModelRefused("bad_name", problem)
    rule = policy.rule_for(name)
    if rule is None:
        raise ModelRefused("not_in_policy", f"model {name!r} is named by no [[models.rules]] entry of "
                                            f"{policy.source}; only the models a rule names are served")
    signature = default_signature_path(model)
    if not signature.is_file():
        raise ModelRefused("unsigned", f"{model}: unsigned (no {signature.name}); sign it with "
                                       "`bastion sign` and a key the policy's signer_keys trust")
    _trusted_signer(signature, policy)  # which key, or why none: before any model file is read
    attestation_path = default_attestation_path(model)
    needs_attestation = rule.attestation_required or rule.require is not None
    if needs_attestation and not attestation_path.is_file():
        raise ModelRefused("no_attestation", f"{model}: the policy requires a robustness attestation for "
                                             f"{name!r} and there is none ({attestation_path.name}); "
                                             "make one with `bastion attest`")
    trust = ModelTrust(keys=list(policy.signer_keys), attestation_keys=list(policy.attester_keys),
                       attestation=attestation_path if needs_attestation else None)
    entered = False  # past this point an exception comes from the caller's block: not ours to relabel
    try:
        with verified_copy(model, trust) as verified:
            met: tuple[str, ...] = ()
            if rule.require is not None:
                try:
                    met = tuple(check_requirement(rule.require, verified.attestation.evaluation,
                                                  str(attestation_path)))
                except VerificationError as exc:
                    raise ModelRefused("requirement", str(exc)) from None
            trusted = TrustedModel(
                name=name, path=model, copy=verified.path, rule=rule, digest=verified.signed.root_digest,
                hash_type=verified.signed.hash_type, files=verified.signed.files,
                signer_hint=key_hint(verified.signer_key), attestation=verified.attestation,
                attester_hint=key_hint(verified.attester_key) if verified.attester_key is not None else None,
                requirements_met=met)
            entered = True
            yield trusted
    except VerificationError as exc:
        if entered or isinstance(exc, ModelRefused):
            raise
        message = str(exc)
        if "attests a different model" in message:
            kind = "other_digest"
        elif needs_attestation and str(attestation_path) in message:
            kind = "attestation"
        else:
            kind = "tampered"  # the signature verified; the files on disk are not what it signs
        raise ModelRefused(kind, message) from None


def _trusted_signer(signature: Path, policy: ModelsPolicy) -> Any:
    errors = []
    for key in policy.signer_keys:
        try:
            read_signature(signature, key)
            return key
        except VerificationError as exc:
            errors.append(str(exc))
    if len(errors) == 1:
        raise ModelRefused("signature", errors[0])
    raise ModelRefused("signature", f"{signature}: verifies with none of the {len(errors)} trusted signer keys "
                                    f"({errors[-1]})")


# ---------------------------------------------------------------------------------------------
# Reading the [models] section (called by bastion.access.policy_file while it reads a policy).

def parse_models_section(raw: Any, source: str, base_dir: Path) -> ModelsPolicy | None:
    """The validated ``[models]`` table, or None when the policy has none (then no model is served)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: models: expected a table ([models])")
    reader = TableReader(source, raw, "models.", MODELS_KEYS)
    reader.get("description", str)
    signers = _keys(reader, "signer_keys", base_dir, required=True)
    attesters = _keys(reader, "attester_keys", base_dir, required=False)
    tables = reader.get("rules", list, [])
    if not tables:
        reader.fail("rules", "list at least one rule ([[models.rules]] with models = [...]); "
                             "without one no model is served")
    rules = tuple(_rule(source, table, f"models.rules[{i}].", base_dir) for i, table in enumerate(tables))
    for i, rule in enumerate(rules):
        if (rule.attestation_required or rule.require) and not attesters:
            raise ConfigError(f"{source}: models.rules[{i}].require: needs attester keys to check attestations "
                              "under; list them in models.attester_keys")
    return ModelsPolicy(signers, attesters, rules, source)


def _keys(reader, key: str, base_dir: Path, *, required: bool) -> tuple[Any, ...]:
    from bastion.access.keys import load_public_key
    paths = reader.strings(key, required=required)
    if required and not paths:
        reader.fail(key, "list at least one trusted public key (PEM path)")
    keys = []
    for text in paths:
        path = resolve_path(base_dir, text)
        try:
            public = load_public_key(path)
        except BastionError as exc:
            reader.fail(key, str(exc))
        if not hasattr(public, "curve"):
            reader.fail(key, f"{path}: model signatures and attestations use ECDSA keys (P-256/P-384/P-521)")
        keys.append(public)
    return tuple(keys)


def _rule(source: str, table: Any, prefix: str, base_dir: Path) -> ModelRule:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: {prefix[:-1]}: expected a table ([[models.rules]])")
    reader = TableReader(source, table, prefix, RULE_KEYS)
    reader.get("description", str)
    patterns = reader.strings("models", required=True)
    if not patterns:
        reader.fail("models", "list the model names or glob patterns this rule covers")
    for pattern in patterns:
        problem = model_pattern_problem(pattern)
        if problem:
            reader.fail("models", problem)
    require = reader.get("require", str)
    if require is not None:
        try:
            parse_requirement(require)
        except UsageError as exc:
            reader.fail("require", str(exc).removeprefix("--require: "))
    attestation_required = reader.get("attestation_required", bool, require is not None)
    if require is not None and not attestation_required:
        reader.fail("attestation_required", "a requirement is checked against an attestation; it cannot be false "
                                            "while require is set")
    detector = reader.get("detector", str, "off")
    if detector not in DETECTOR_MODES:
        reader.fail("detector", f"{detector!r} is not one of {', '.join(DETECTOR_MODES)}")
    fpr = reader.number("detector_fpr", 0.05, 0.0001, 0.5)
    calibration = reader.get("calibration", str)
    if calibration is not None and calibration not in BUILTIN_CALIBRATION:
        path = resolve_path(base_dir, calibration)
        if path.suffix != ".npz" or not path.is_file():
            reader.fail("calibration", f"{calibration!r}: give mnist, digits, or an existing .npz file with x "
                                       "(clean inputs)")
        calibration = str(path.resolve())
    samples = reader.get("calibration_samples", int, 1000)
    if not 2 <= samples <= 100_000:
        reader.fail("calibration_samples", f"{samples} is out of range (2 to 100000)")
    max_batch = reader.get("max_batch", int, 32)
    if not 1 <= max_batch <= 1024:
        reader.fail("max_batch", f"{max_batch} is out of range (1 to 1024)")
    return ModelRule(models=tuple(patterns), require=require, attestation_required=attestation_required,
                     detector=detector, detector_fpr=float(fpr), calibration=calibration,
                     calibration_samples=samples, max_batch=max_batch,
                     max_delay_ms=float(reader.number("max_delay_ms", 2.0, 0, 1000)))
