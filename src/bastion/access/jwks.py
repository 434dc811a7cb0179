"""JSON Web Key Sets (RFC 7517): read them from a file or a URL, and publish one for our keys.

A remote set is cached for ``ttl`` seconds. A token whose ``kid`` is not in
the cached set triggers at most one refetch per ``cooldown`` (so a flood of
made-up kids costs the issuer one request, not one per token), and a failed
fetch keeps the last good set. Known keys keep verifying while a refetch is in
flight: no lock is held during a fetch. Responses are capped in size and redirects are
refused. Only URLs a policy names are ever fetched: a token's ``jku`` or
``x5u`` never is.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives import serialization

from bastion.access.token_keys import algorithm_for_key, jwk_fits, jwk_to_public_key, public_jwk, thumbprint
from bastion.access.tokens import safe_kid_problem
from bastion.errors import BastionError, ConfigError, KeySetError, TokenError

DEFAULT_TTL_SECONDS = 300.0
DEFAULT_COOLDOWN_SECONDS = 30.0
DEFAULT_MAX_BYTES = 64 * 1024
DEFAULT_TIMEOUT_SECONDS = 5.0
MAX_KEYS = 64


def parse_jwks(document: bytes | str | dict, algorithm: str) -> dict[str, Any]:
    """{kid: public key} for the keys in a JWKS that sign ``algorithm``; KeySetError says what is wrong.

    Keys for other uses or algorithms (a provider may publish several) are
    skipped; a key meant for ``algorithm`` that does not load is an error.
    """
    if not isinstance(document, dict):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError):
            raise KeySetError("not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise KeySetError('not a JWKS: expected a JSON object with a "keys" list')
    if len(keys) > MAX_KEYS:
        raise KeySetError(f"{len(keys)} keys; at most {MAX_KEYS} are read")
    found: dict[str, Any] = {}
    for index, jwk in enumerate(keys):
        if not isinstance(jwk, dict):
            raise KeySetError(f"keys[{index}] is not a JSON object")
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", algorithm) != algorithm or not jwk_fits(jwk, algorithm):
            continue
        kid = jwk.get("kid")
        problem = safe_kid_problem(kid)
        if problem:
            raise KeySetError(f"keys[{index}]: {problem}")
        try:
            key = jwk_to_public_key(jwk, algorithm)
        except KeySetError as exc:
            raise KeySetError(f"keys[{index}] (kid {kid!r}): {exc}") from None
        if kid in found:
            raise KeySetError(f"keys[{index}]: kid {kid!r} appears twice")
        found[kid] = key
    if not found:
        raise KeySetError(f"no {algorithm} signing keys in the set")
    return found


def load_jwks_file(path: str | Path, algorithm: str) -> dict[str, Any]:
    """The keys of a local JWKS file; KeySetError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise KeySetError(f"{path}: no such JWKS file")
    if path.stat().st_size > DEFAULT_MAX_BYTES:
        raise KeySetError(f"{path}: larger than {DEFAULT_MAX_BYTES} bytes; not a key set")
    try:
        return parse_jwks(path.read_bytes(), algorithm)
    except KeySetError as exc:
        raise KeySetError(f"{path}: {exc}") from None


def jwks_document(public_keys: list[Any], rsa_algorithm: str | None = None) -> dict:
    """A JWKS publishing ``public_keys``, each with its thumbprint as kid (and alg where it is certain)."""
    keys = []
    for key in public_keys:
        jwk = public_jwk(key)
        jwk["kid"] = thumbprint(key)
        jwk["use"] = "sig"
        if jwk["kty"] != "RSA" or rsa_algorithm:
            jwk["alg"] = algorithm_for_key(key, rsa_algorithm or "RS256")
        keys.append(jwk)
    return {"keys": keys}


def url_problem(url: str, allow_insecure_localhost: bool) -> str | None:
    """Why a JWKS URL is refused: only https, or http to a loopback address when explicitly allowed."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "not a URL"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname:
        if not _is_loopback(parts.hostname):
            return "must use https (plain http is allowed only to 127.0.0.1/localhost for testing)"
        if not allow_insecure_localhost:
            return "plain http to localhost needs insecure_localhost = true (testing only)"
        return None
    return "must be an https:// URL"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class RemoteJwks:
    """An issuer's keys served as a JWKS at a URL: cached, refreshed, and fetched sparingly.

    The lock guards only the bookkeeping (when a fetch was last tried, whether one is
    in flight); it is never held while the network is used. A token whose kid is in
    the cached set verifies at once even while a refetch is in flight; a token with
    an unknown kid waits for that refetch, never starts a second one.
    """

    fetches = True

    def __init__(self, issuer: str, url: str, algorithm: str, *, ttl: float = DEFAULT_TTL_SECONDS,
                 cooldown: float = DEFAULT_COOLDOWN_SECONDS, max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, allow_insecure_localhost: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        problem = url_problem(url, allow_insecure_localhost)
        if problem:
            raise ConfigError(f"JWKS URL {url[:200]!r}: {problem}")
        self.issuer = issuer
        self.url = url
        self.algorithm = algorithm
        self.ttl = ttl
        self.cooldown = cooldown
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.clock = clock
        self.fetch_count = 0
        self.last_error: str | None = None
        # (keys, when they were fetched), replaced whole so readers never see half an update.
        self._state: tuple[dict[str, Any], float] | None = None
        self._attempted_at: float | None = None
        self._in_flight: threading.Event | None = None
        self._lock = threading.Lock()
        handlers: list[Any] = [_RefuseRedirects()]
        if _is_loopback(urllib.parse.urlsplit(url).hostname or ""):
            handlers.append(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def only_key(self) -> None:
        return None  # the set can change at any time

    def key_for(self, kid: str | None) -> tuple[str | None, Any]:
        keys = self._current_keys()
        if kid is not None and kid not in keys:
            keys = self._refresh(wait=True)  # perhaps a rotation: at most one fetch per cooldown
        if self._state is None:
            reason = self.last_error or "a first fetch is still in flight"
            raise TokenError(f"no keys for issuer {self.issuer!r}: its JWKS could not be fetched ({reason})")
        if kid is None:
            if len(keys) == 1:
                return next(iter(keys.items()))
            raise TokenError(f"token has no kid, and issuer {self.issuer!r} publishes {len(keys)} keys")
        if kid in keys:
            return kid, keys[kid]
        raise TokenError(f"unknown kid {kid!r} for issuer {self.issuer!r} (not in its JWKS)")

    def still_trusts(self, kid: str | None, key: Any) -> bool:
        return kid is not None and self._current_keys().get(kid) is key

    def _current_keys(self) -> dict[str, Any]:
        """The cached set, refreshed first when it is older than ``ttl`` (or was never fetched).

        A stale set keeps serving while another thread refetches it; only a set never
        fetched makes the caller wait, since it has nothing to serve meanwhile.
        """
        state = self._state
        if state is None or self.clock() - state[1] >= self.ttl:
            self._refresh(wait=state is None)
            state = self._state
        return state[0] if state is not None else {}

    def _refresh(self, *, wait: bool) -> dict[str, Any]:
        """Fetch the set unless a fetch was tried within the cooldown; on failure keep the last good set.

        Returns the keys as they are afterwards. With ``wait``, a caller that finds a fetch
        in flight waits for it (up to the fetch timeout) instead of starting another.
        """
        with self._lock:
            in_flight = self._in_flight
            if in_flight is None:
                now = self.clock()
                if self._attempted_at is not None and now - self._attempted_at < self.cooldown:
                    return self._keys_now()
                self._attempted_at = now
                self.fetch_count += 1
                self._in_flight = done = threading.Event()
        if in_flight is not None:
            if wait:
                in_flight.wait(self.timeout + 1.0)
            return self._keys_now()
        keys, error = None, None
        try:
            keys = self._reuse_unchanged(parse_jwks(self._fetch(), self.algorithm))
        except (BastionError, ValueError, OSError, http.client.HTTPException) as exc:
            error = f"{self.url}: {str(exc)[:200]}"
        finally:
            with self._lock:
                if keys is not None:
                    self._state = (keys, now)
                self.last_error = error
                self._in_flight = None
            done.set()
        return self._keys_now()

    def _keys_now(self) -> dict[str, Any]:
        state = self._state
        return state[0] if state is not None else {}

    def _reuse_unchanged(self, fetched: dict[str, Any]) -> dict[str, Any]:
        """The fetched set, keeping the key objects already held for kids whose key did not change.

        Cached verified tokens remember the key object that verified them, so an
        unchanged key must stay the same object across refreshes.
        """
        held = self._keys_now()
        return {kid: held[kid] if kid in held and _same_key(held[kid], key) else key for kid, key in fetched.items()}

    def _fetch(self) -> bytes:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json",
                                                             "User-Agent": "bastion-jwks"})
        with self._opener.open(request, timeout=self.timeout) as response:
            body = response.read(self.max_bytes + 1)
        if len(body) > self.max_bytes:
            raise KeySetError(f"response larger than {self.max_bytes} bytes")
        return body


def _same_key(a: Any, b: Any) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return type(a) is type(b) and a.public_bytes(*spki) == b.public_bytes(*spki)
