"""Rate-limit buckets and one-time jti values in Redis, shared by every replica of a gateway.

Each operation is one atomic command on the server, so two replicas can never both accept a
replayed jti or let a caller past its combined rate:

- a bucket is a hash ``{tokens, at}`` updated by one Lua script (EVALSHA, or EVAL when the
  server does not hold the script, as after a restart). The script reads the time from Redis
  (``TIME``), never from the replica, so replicas whose clocks disagree still share one rate;
- a one-time jti is ``SET key 1 NX PX ttl``: only the first replica to set it hears yes.

Keys are ``bastion:<namespace>:<kind>:<sha256 of the rest>`` (kind ``rate``, ``fail`` or
``jti``): no caller, address or jti is stored in clear. Every key expires: a bucket once it
would be full again (a full bucket is the same as none), a jti once its token has expired,
plus :data:`SKEW_MARGIN_SECONDS` so a replica whose clock is behind still finds it spent.

When Redis is unreachable, slow (a call waits at most the policy's ``timeout_seconds``) or
answers with an error, the operation raises :class:`~bastion.errors.ServiceUnavailable` and
the gateway fails closed. After a failure, calls fail at once for :data:`RETRY_SECONDS`
instead of each waiting on a dead server; then the next call, or a readiness probe, tries
again on a fresh connection. One log line when the store goes down, one when it is back;
every failed operation is reported to ``on_error`` (the gateway's
``bastion_shared_state_errors_total{operation}``).

The client is redis-py's synchronous one, so ``blocking = True``: the gateway runs the whole
authorization in a thread (the policy's one-time-jti check is synchronous and sits inside
the decision), never on its event loop.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

from bastion.access.shared_state_config import SharedStateConfig
from bastion.errors import ServiceUnavailable
from bastion.serving.http import one_line

log = logging.getLogger("bastion.serve")

#: After a failure, how long calls fail at once before the server is tried again.
RETRY_SECONDS = 1.0
#: Extra life of a spent jti: replicas' clocks may lag Redis's by this much without reopening a replay.
SKEW_MARGIN_SECONDS = 60.0
#: The longest a bucket key lives (a tiny rate with a large burst would otherwise ask for centuries).
MAX_BUCKET_TTL_MS = 10 * 365 * 86400 * 1000

# The same arithmetic, in the same order, as MemoryState's bucket: both give the same decisions for
# the same takes at the same times (tests/test_serve_replicas.py checks it). ARGV: rate, burst, take (1)
# or peek (0), the longest TTL in ms, and a time that only those tests pass: the gateway never does,
# so Redis's clock is the only clock. Numbers go back as strings (Redis truncates Lua numbers to integers).
BUCKET_LUA = """
local rate, burst, take = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local now
if ARGV[5] then
  now = tonumber(ARGV[5])
else
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
end
local tokens = burst
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
if saved[1] then
  tokens = math.min(burst, tonumber(saved[1]) + math.max(0, now - tonumber(saved[2])) * rate)
end
local allowed = tokens >= 1
local wait
if take then
  if allowed then tokens = tokens - 1 end
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
  local ttl = math.min(math.ceil((burst - tokens) / rate * 1000) + 1000, tonumber(ARGV[4]))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
  if allowed then wait = 0 else wait = (1 - tokens) / rate end
else
  wait = math.max(0, (1 - tokens) / rate)
end
if allowed then allowed = 1 else allowed = 0 end
return {allowed, string.format('%.17g', wait)}
"""
BUCKET_SHA = hashlib.sha1(BUCKET_LUA.encode("utf-8")).hexdigest()


def shown_url(url: str) -> str:
    """The url without any user name (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


class RedisState:
    """:class:`~bastion.serving.state.SharedState` in Redis; keys under ``namespace`` (``bastion:...``)."""

    blocking = True

    def __init__(self, config: SharedStateConfig, namespace: str, *,
                 on_error: Callable[[str], None] | None = None):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.namespace = namespace
        self.where = shown_url(config.url)
        self.on_error = on_error or (lambda operation: None)
        # No retries: a retried SET NX whose first reply was lost would call a first use a replay,
        # and retries multiply the time a request waits on a dead server.
        self.client = redis.Redis.from_url(config.url, username=config.username, password=config.password,
                                           socket_timeout=config.timeout_seconds,
                                           socket_connect_timeout=config.timeout_seconds,
                                           retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._failures = (redis.RedisError, OSError)
        self._no_script = redis.exceptions.NoScriptError
        self._lock = threading.Lock()
        self._down: tuple[float, str] | None = None

    def key(self, name: str) -> str:
        """The Redis key of a state key ``kind\\x00fields``: its kind in clear, the fields hashed."""
        kind, _, fields = name.partition("\x00")
        # surrogatepass: a jti from JSON may hold a lone surrogate, which plain UTF-8 refuses.
        digest = hashlib.sha256(fields.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.namespace}:{kind}:{digest}"

    # -- the SharedState operations (``now`` is the replica's clock: Redis keeps its own) -----
    def take(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        return self.bucket("take", key, rate, burst)

    def peek(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        return self.bucket("peek", key, rate, burst)

    def spend_once(self, key: str, ttl: float, now: float) -> bool:
        milliseconds = math.ceil((ttl + SKEW_MARGIN_SECONDS) * 1000)
        redis_key = self.key(key)
        return bool(self._call("spend_once", lambda: self.client.set(redis_key, b"1", nx=True, px=milliseconds)))

    def is_spent(self, key: str, now: float) -> bool:
        redis_key = self.key(key)
        return self._call("is_spent", lambda: self.client.exists(redis_key)) == 1

    def health(self) -> str | None:
        try:
            self._call("ping", self.client.ping, probe=True)
        except ServiceUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        self.client.close()

    # -- the machinery -------------------------------------------------------------------------
    def bucket(self, operation: str, key: str, rate: float, burst: float,
               at: float | None = None) -> tuple[bool, float]:
        """Take from (``take``) or look at (``peek``) a bucket; ``at`` overrides Redis's clock (tests only)."""
        keys_and_args = [self.key(key), repr(float(rate)), repr(float(burst)), "1" if operation == "take" else "0",
                         str(MAX_BUCKET_TTL_MS)]
        if at is not None:
            keys_and_args.append(repr(float(at)))

        def script():
            try:
                return self.client.evalsha(BUCKET_SHA, 1, *keys_and_args)
            except self._no_script:  # a fresh or restarted server: EVAL runs the script and caches it there
                return self.client.eval(BUCKET_LUA, 1, *keys_and_args)

        allowed, wait = self._call(operation, script)
        return allowed == 1, float(wait)

    def _call(self, operation: str, command: Callable[[], object], *, probe: bool = False):
        down = self._down  # (until, reason) of the last failure, read once: other threads may reset it
        if down is not None and not probe and down[0] > time.monotonic():
            self.on_error(operation)
            raise ServiceUnavailable(f"shared state {self.where} is unavailable ({down[1]})", operation,
                                     down[0] - time.monotonic())
        try:
            result = command()
        except self._failures as exc:
            reason = one_line(str(exc), 200) or type(exc).__name__
            self.on_error(operation)
            with self._lock:
                if self._down is None:
                    log.warning("shared state %s is unavailable (%s: %s): refusing what needs it; retrying "
                                "every %g s", self.where, operation, reason, RETRY_SECONDS)
                self._down = (time.monotonic() + RETRY_SECONDS, reason)
            raise ServiceUnavailable(f"shared state {self.where} is unavailable ({reason})", operation,
                                     RETRY_SECONDS) from None
        if self._down is not None:
            with self._lock:
                if self._down is not None:
                    log.info("shared state %s is reachable again", self.where)
                    self._down = None
        return result
