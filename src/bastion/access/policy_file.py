"""Read an access policy from TOML, validating every key; errors are one line naming file and key.

A policy file is data: nothing in it is imported or executed, and it never
holds a secret (HS256 secrets come from a file or an environment variable it
names). Relative paths are resolved against the policy file's folder.
See policies/gateway.toml for a documented example.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bastion.access.jwks import (DEFAULT_COOLDOWN_SECONDS, DEFAULT_MAX_BYTES, DEFAULT_TTL_SECONDS, RemoteJwks,
                                 load_jwks_file)
from bastion.access.keys import load_public_key
from bastion.access.limits import parse_limits_section
from bastion.access.model_trust import parse_models_section
from bastion.access.policy import Policy, ScopeGrant, grant_problem
from bastion.access.policy_reader import TableReader, resolve_path
from bastion.access.shared_state_config import parse_state_section
from bastion.access.token_keys import key_problem, read_secret_file, secret_problem, thumbprint
from bastion.access.tokens import (ALGORITHMS, BASE_REQUIRED_CLAIMS, DEFAULT_MAX_LIFETIME_SECONDS,
                                   DEFAULT_MAX_TOKEN_BYTES, MAX_LEEWAY_SECONDS, MAX_LIFETIME_SECONDS, StaticKeys,
                                   TokenRules, TokenVerifier, TrustedIssuer, safe_kid_problem)
from bastion.catalog import resolve
from bastion.errors import BastionError, ConfigError
from bastion.tomlfile import read_toml

MAX_POLICY_BYTES = 1024 * 1024

# Top-level keys of the token rules, read by policy_from_dict itself.
TOP_LEVEL_KEYS = {"audience", "required_claims", "leeway_seconds", "max_token_bytes", "max_lifetime_seconds",
                  "allow_audience_list", "one_time_jti", "verified_cache_size", "issuers", "scopes", "revoked",
                  "description"}
ISSUER_KEYS = {"iss", "algorithm", "key_file", "kid", "jwks_file", "jwks_url", "secret_file", "secret_env",
               "jwks_ttl_seconds", "jwks_cooldown_seconds", "jwks_max_bytes", "insecure_localhost"}
SCOPE_KEYS = {"actions", "models", "description"}
REVOKED_KEYS = {"jti", "subjects"}


@dataclass(frozen=True)
class SectionContext:
    """What a section parser gets besides its table: where errors point, and where paths resolve."""

    source: str
    base_dir: Path
    environ: Mapping[str, str]
    scope_names: frozenset[str] = frozenset()

    def reader(self, table: Any, prefix: str, allowed: set[str]) -> TableReader:
        """A reader for ``table`` (which must be a TOML table) whose errors say ``{source}: {prefix}{key}``."""
        if not isinstance(table, dict):
            raise ConfigError(f"{self.source}: {prefix.rstrip('.')}: expected a table")
        return TableReader(self.source, table, prefix, allowed)


#: A section parser turns the value of one top-level key into what the policy keeps for it
#: (``Policy.sections[name]``), raising ConfigError (via ``context.reader(...).fail``) on a bad value.
SectionParser = Callable[[Any, SectionContext], Any]

#: Extra top-level sections, one line each: ``"name": parser``. A feature that adds a section
#: to policies (e.g. ``[models]``) writes its parser and adds it here; keys in no table at all
#: still fail loudly as unknown.
SECTIONS: dict[str, SectionParser] = {
    "models": lambda value, context: parse_models_section(value, context.source, context.base_dir),
    "limits": lambda value, context: parse_limits_section(value, context.source, context.scope_names),
    "state": lambda value, context: parse_state_section(value, context.source, context.base_dir, context.environ),
}


def load_policy(name_or_path: str | Path, *, environ: Mapping[str, str] | None = None) -> Policy:
    """Load a policy by catalog name (``gateway``) or path; ConfigError on any problem."""
    path = resolve("policies", name_or_path)
    if path.stat().st_size > MAX_POLICY_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_POLICY_BYTES} bytes; not a policy file")
    data = read_toml(path, ConfigError)
    return policy_from_dict(data, source=str(path), base_dir=path.parent,
                            environ=os.environ if environ is None else environ)


def policy_from_dict(data: Mapping[str, Any], *, source: str = "<policy>", base_dir: Path = Path("."),
                     environ: Mapping[str, str] | None = None) -> Policy:
    environ = os.environ if environ is None else environ
    top = TableReader(source, data, "", TOP_LEVEL_KEYS | set(SECTIONS))
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
        max_lifetime_seconds=top.number("max_lifetime_seconds", DEFAULT_MAX_LIFETIME_SECONDS, 1,
                                        MAX_LIFETIME_SECONDS),
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
    revoked = TableReader(source, top.get("revoked", dict, {}), "revoked.", REVOKED_KEYS)
    try:
        verifier = TokenVerifier(issuers, rules)
    except BastionError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    context = SectionContext(source, base_dir, environ, frozenset(scopes))
    sections = {name: parse(data[name], context) for name, parse in SECTIONS.items() if name in data}
    return Policy(verifier=verifier, scopes=scopes, revoked_jti=set(revoked.strings("jti")),
                  revoked_subjects=set(revoked.strings("subjects")), one_time_jti=one_time,
                  cache_size=int(top.number("verified_cache_size", 10_000, 0, 10_000_000)), source=source,
                  sections=sections)


def _scope(source: str, name: str, table: Any) -> ScopeGrant:
    shown = name if len(name) <= 80 and name.isprintable() else repr(name[:80])
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: scopes.{shown}: expected a table with actions and models")
    reader = TableReader(source, table, f"scopes.{shown}.", SCOPE_KEYS)
    reader.get("description", str)
    actions = reader.strings("actions", required=True)
    models = reader.strings("models", required=True)
    problem = grant_problem(name, actions, models)
    if problem:
        field, reason = problem
        if field == "name":
            raise ConfigError(f"{source}: scopes.{shown}: {reason}")
        reader.fail(field, reason)
    return ScopeGrant(name, frozenset(actions), tuple(models))


def _issuer(source: str, table: Any, prefix: str, base_dir: Path, environ: Mapping[str, str]) -> TrustedIssuer:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {prefix[:-1]}: expected a table ([[issuers]])")
    if "secret" in table or "key" in table:
        name = "secret" if "secret" in table else "key"
        raise ConfigError(f"{source}: {prefix}{name}: secrets never go in a policy file; "
                          "use secret_file or secret_env")
    reader = TableReader(source, table, prefix, ISSUER_KEYS)
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
        url = reader.get("jwks_url", str)
        settings = dict(ttl=reader.number("jwks_ttl_seconds", DEFAULT_TTL_SECONDS, 1, 7 * 86400),
                        cooldown=reader.number("jwks_cooldown_seconds", DEFAULT_COOLDOWN_SECONDS, 0, 86400),
                        max_bytes=int(reader.number("jwks_max_bytes", DEFAULT_MAX_BYTES, 1024, 1024 * 1024)),
                        allow_insecure_localhost=reader.get("insecure_localhost", bool, False))
        try:
            keys: Any = RemoteJwks(iss, url, algorithm, **settings)
        except ConfigError as exc:
            reader.fail("jwks_url", str(exc))
    elif where == "jwks_file":
        path = resolve_path(base_dir, reader.get("jwks_file", str))
        try:
            keys = StaticKeys(iss, load_jwks_file(path, algorithm))
        except ConfigError as exc:
            reader.fail("jwks_file", str(exc))
    elif where == "key_file":
        keys = StaticKeys(iss, _key_files(reader, base_dir, algorithm, kid))
    else:
        keys = StaticKeys(iss, {kid: _secret(reader, where, base_dir, environ)})
    return TrustedIssuer(iss, algorithm, keys)


def _key_files(reader: TableReader, base_dir: Path, algorithm: str, kid: str | None) -> dict[str | None, Any]:
    """key_file: one path, or a list of paths (e.g. the current and the next key during a rotation)."""
    value = reader.get("key_file", (str, list))
    paths = [value] if isinstance(value, str) else value
    if not paths or not all(isinstance(p, str) for p in paths):
        reader.fail("key_file", "expected a path or a list of paths")
    if kid is not None and len(paths) != 1:
        reader.fail("kid", "a kid names one key_file; with several, each key's kid is its thumbprint")
    keys: dict[str | None, Any] = {}
    for text in paths:
        path = resolve_path(base_dir, text)
        try:
            key = load_public_key(path)
        except BastionError as exc:
            reader.fail("key_file", str(exc))
        problem = key_problem(algorithm, key)
        if problem:
            reader.fail("key_file", f"{path}: {problem}")
        keys[kid or thumbprint(key)] = key
    return keys


def _secret(reader: TableReader, where: str, base_dir: Path, environ: Mapping[str, str]) -> bytes:
    name = reader.get(where, str)
    if where == "secret_env":
        if name not in environ or not environ[name]:
            reader.fail(where, f"environment variable {name} is not set; export the HS256 secret in it")
        secret = environ[name].encode("utf-8")
    else:
        path = resolve_path(base_dir, name)
        if not path.is_file():
            reader.fail(where, f"{path}: no such file")
        try:
            secret = read_secret_file(path)
        except BastionError as exc:
            reader.fail(where, str(exc))
    problem = secret_problem(secret)
    if problem:
        reader.fail(where, problem)
    return secret
