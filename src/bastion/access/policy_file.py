"""Read an access policy from TOML, validating every key; errors are one line naming file and key.

A policy file is data: nothing in it is imported or executed, and it never
holds a secret (HS256 secrets come from a file or an environment variable it
names). Relative paths are resolved against the policy file's folder.
See policies/gateway.toml for a documented example.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion.access.jwks import (DEFAULT_COOLDOWN_SECONDS, DEFAULT_MAX_BYTES, DEFAULT_TTL_SECONDS, RemoteJwks,
                                 load_jwks_file)
from bastion.access.keys import load_public_key
from bastion.access.policy import ANY, Policy, ScopeGrant
from bastion.access.token_keys import key_problem, secret_problem, thumbprint
from bastion.access.tokens import (ALGORITHMS, BASE_REQUIRED_CLAIMS, DEFAULT_MAX_TOKEN_BYTES, MAX_LEEWAY_SECONDS,
                                   StaticKeys, TokenRules, TokenVerifier, TrustedIssuer, safe_kid_problem)
from bastion.errors import BastionError, ConfigError
from bastion.tomlfile import read_toml

MAX_POLICY_BYTES = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")

# Top-level keys this module reads. Sections other features add to a policy
# (e.g. model requirements) must be listed here so that typos still fail loudly.
TOP_LEVEL_KEYS = {"audience", "required_claims", "leeway_seconds", "max_token_bytes", "allow_audience_list",
                  "one_time_jti", "verified_cache_size", "issuers", "scopes", "revoked", "description",
                  "models", "limits"}
ISSUER_KEYS = {"iss", "algorithm", "key_file", "kid", "jwks_file", "jwks_url", "secret_file", "secret_env",
               "jwks_ttl_seconds", "jwks_cooldown_seconds", "jwks_max_bytes", "insecure_localhost"}
SCOPE_KEYS = {"actions", "models", "description"}
REVOKED_KEYS = {"jti", "subjects"}


class _Reader:
    """Typed access to one table of the policy, raising ConfigError that names file and key."""

    def __init__(self, source: str, table: Mapping[str, Any], prefix: str, allowed: set[str]):
        self.source, self.table, self.prefix = source, table, prefix
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown key (known: {', '.join(sorted(allowed))})")

    def fail(self, key: str, problem: str):
        raise ConfigError(f"{self.source}: {self.prefix}{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                self.fail(key, "missing (required)")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
            self.fail(key, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            self.fail(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def strings(self, key: str, default: list[str] | None = None, *, required: bool = False) -> list[str]:
        value = self.get(key, list, default, required=required)
        if value is None:
            return []
        if not all(isinstance(item, str) for item in value):
            self.fail(key, "expected a list of strings")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, (int, float), default)
        if not low <= value <= high:
            self.fail(key, f"{value} is out of range ({low:g} to {high:g})")
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_policy(name_or_path: str | Path, *, environ: Mapping[str, str] | None = None) -> Policy:
    """Load a policy by catalog name (``gateway``) or path; ConfigError on any problem."""
    from bastion.catalog import resolve

    path = resolve("policies", name_or_path)
    if path.stat().st_size > MAX_POLICY_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_POLICY_BYTES} bytes; not a policy file")
    data = read_toml(path, ConfigError)
    return policy_from_dict(data, source=str(path), base_dir=path.parent,
                            environ=os.environ if environ is None else environ)


def policy_from_dict(data: Mapping[str, Any], *, source: str = "<policy>", base_dir: Path = Path("."),
                     environ: Mapping[str, str] | None = None) -> Policy:
    environ = os.environ if environ is None else environ
    top = _Reader(source, data, "", TOP_LEVEL_KEYS)
    audience = top.get("audience", str, required=True)
    if not audience:
        top.fail("audience", "must not be empty")
    required = top.strings("required_claims", list(BASE_REQUIRED_CLAIMS))
    missing = [claim for claim in BASE_REQUIRED_CLAIMS if claim not in required]
    if missing:
        top.fail("required_claims", f"must include {', '.join(missing)} (at least {', '.join(BASE_REQUIRED_CLAIMS)})")
    one_time = top.get("one_time_jti", bool, False)
    if one_time and "jti" not in required:
        required = [*required, "jti"]
    rules = TokenRules(
        audience=audience,
        required_claims=tuple(dict.fromkeys(required)),
        leeway_seconds=top.number("leeway_seconds", 30, 0, MAX_LEEWAY_SECONDS),
        max_token_bytes=int(top.number("max_token_bytes", DEFAULT_MAX_TOKEN_BYTES, 256, 64 * 1024)),
        allow_audience_list=top.get("allow_audience_list", bool, False),
    )
    issuer_tables = top.get("issuers", list, required=True)
    if not issuer_tables:
        top.fail("issuers", "list at least one trusted issuer ([[issuers]])")
    issuers = [_issuer(source, table, f"issuers[{i}].", base_dir, environ) for i, table in enumerate(issuer_tables)]
    seen: set[str] = set()
    for i, issuer in enumerate(issuers):
        if issuer.iss in seen:
            raise ConfigError(f"{source}: issuers[{i}].iss: {issuer.iss!r} is listed twice")
        seen.add(issuer.iss)
    scope_tables = top.get("scopes", dict, {})
    if not scope_tables:
        top.fail("scopes", "define at least one scope ([scopes.NAME] with actions and models); "
                           "without one every request is denied")
    scopes = {name: _scope(source, name, table) for name, table in scope_tables.items()}
    revoked = _Reader(source, top.get("revoked", dict, {}), "revoked.", REVOKED_KEYS)
    try:
        verifier = TokenVerifier(issuers, rules)
    except BastionError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    from bastion.access.limits import parse_limits_section
    from bastion.access.model_trust import parse_models_section

    return Policy(verifier=verifier, scopes=scopes, revoked_jti=set(revoked.strings("jti")),
                  revoked_subjects=set(revoked.strings("subjects")), one_time_jti=one_time,
                  cache_size=int(top.number("verified_cache_size", 10_000, 0, 10_000_000)), source=source,
                  models=parse_models_section(data.get("models"), source, base_dir),
                  limits=parse_limits_section(data.get("limits"), source, scopes))


def _scope(source: str, name: str, table: Any) -> ScopeGrant:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: scopes.{name}: expected a table with actions and models")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{source}: scopes.{name}: not a usable scope name (letters, digits, . _ : / -)")
    reader = _Reader(source, table, f"scopes.{name}.", SCOPE_KEYS)
    reader.get("description", str)
    actions = reader.strings("actions", required=True)
    models = reader.strings("models", required=True)
    if not actions:
        reader.fail("actions", "list at least one action (e.g. predict, attack, train, admin, or \"*\")")
    for action in actions:
        if action != ANY and not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", action):
            reader.fail("actions", f"{action!r} is not an action name (lowercase letters, digits, _ or -)")
    if not models:
        reader.fail("models", "list the models this scope reaches (names, glob patterns, or \"*\")")
    return ScopeGrant(name, frozenset(actions), tuple(models))


def _issuer(source: str, table: Any, prefix: str, base_dir: Path, environ: Mapping[str, str]) -> TrustedIssuer:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {prefix[:-1]}: expected a table ([[issuers]])")
    if "secret" in table or "key" in table:
        name = "secret" if "secret" in table else "key"
        raise ConfigError(f"{source}: {prefix}{name}: secrets never go in a policy file; "
                          "use secret_file or secret_env")
    reader = _Reader(source, table, prefix, ISSUER_KEYS)
    iss = reader.get("iss", str, required=True)
    if not iss:
        reader.fail("iss", "must not be empty")
    algorithm = reader.get("algorithm", str, required=True)
    if algorithm not in ALGORITHMS:
        reader.fail("algorithm", f"{algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    sources = [k for k in ("key_file", "jwks_file", "jwks_url", "secret_file", "secret_env") if k in table]
    if len(sources) != 1:
        reader.fail(sources[1] if sources else "key_file",
                    "give exactly one of key_file, jwks_file, jwks_url (asymmetric algorithms) "
                    "or secret_file, secret_env (HS256)")
    where = sources[0]
    if (algorithm == "HS256") != where.startswith("secret_"):
        reader.fail(where, "HS256 takes secret_file or secret_env; the other algorithms take "
                           "key_file, jwks_file or jwks_url")
    kid = reader.get("kid", str)
    if kid is not None:
        if where not in ("key_file", "secret_file", "secret_env"):
            reader.fail("kid", "only a key_file or secret takes a kid (a JWKS names its own)")
        if safe_kid_problem(kid):
            reader.fail("kid", safe_kid_problem(kid))
    jwks_keys = {"jwks_ttl_seconds", "jwks_cooldown_seconds", "jwks_max_bytes", "insecure_localhost"}
    if where != "jwks_url" and jwks_keys & set(table):
        reader.fail(sorted(jwks_keys & set(table))[0], "applies only to a jwks_url issuer")

    if where == "jwks_url":
        try:
            keys: Any = RemoteJwks(
                iss, reader.get("jwks_url", str), algorithm,
                ttl=reader.number("jwks_ttl_seconds", DEFAULT_TTL_SECONDS, 1, 7 * 86400),
                cooldown=reader.number("jwks_cooldown_seconds", DEFAULT_COOLDOWN_SECONDS, 0, 86400),
                max_bytes=int(reader.number("jwks_max_bytes", DEFAULT_MAX_BYTES, 1024, 1024 * 1024)),
                allow_insecure_localhost=reader.get("insecure_localhost", bool, False))
        except ValueError as exc:
            reader.fail("jwks_url", str(exc))
    elif where == "jwks_file":
        path = _path(base_dir, reader.get("jwks_file", str))
        try:
            keys = StaticKeys(iss, load_jwks_file(path, algorithm))
        except ValueError as exc:
            reader.fail("jwks_file", f"{path}: {exc}")
    elif where == "key_file":
        keys = StaticKeys(iss, _key_files(reader, base_dir, algorithm, kid))
    else:
        keys = StaticKeys(iss, {kid: _secret(reader, where, base_dir, environ)})
    return TrustedIssuer(iss, algorithm, keys)


def _key_files(reader: _Reader, base_dir: Path, algorithm: str, kid: str | None) -> dict[str | None, Any]:
    """key_file: one path, or a list of paths (e.g. the current and the next key during a rotation)."""
    value = reader.get("key_file", (str, list))
    paths = [value] if isinstance(value, str) else value
    if not paths or not all(isinstance(p, str) for p in paths):
        reader.fail("key_file", "expected a path or a list of paths")
    if kid is not None and len(paths) != 1:
        reader.fail("kid", "a kid names one key_file; with several, each key's kid is its thumbprint")
    keys: dict[str | None, Any] = {}
    for text in paths:
        path = _path(base_dir, text)
        try:
            key = load_public_key(path)
        except BastionError as exc:
            reader.fail("key_file", str(exc))
        problem = key_problem(algorithm, key)
        if problem:
            reader.fail("key_file", f"{path}: {problem}")
        keys[kid or thumbprint(key)] = key
    return keys


def _secret(reader: _Reader, where: str, base_dir: Path, environ: Mapping[str, str]) -> bytes:
    name = reader.get(where, str)
    if where == "secret_env":
        if name not in environ or not environ[name]:
            reader.fail(where, f"environment variable {name} is not set; export the HS256 secret in it")
        secret = environ[name].encode("utf-8")
    else:
        path = _path(base_dir, name)
        if not path.is_file():
            reader.fail(where, f"{path}: no such file")
        secret = path.read_bytes()[:1024 * 1024]
        secret = secret[:-2] if secret.endswith(b"\r\n") else secret[:-1] if secret.endswith(b"\n") else secret
    problem = secret_problem(secret)
    if problem:
        reader.fail(where, problem)
    return secret


def _path(base_dir: Path, text: str) -> Path:
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else base_dir / path
