"""Gateway replicas sharing state in Redis: two real `bastion serve` processes and a real redis-server.

A one-time jti spent at one replica is refused at the other (also as its ECDSA twin); a caller's
combined rate across the replicas stays within its limit; Redis stopped mid-run fails closed (503,
JSON, metric, log line, no traceback) and the replicas recover when it is back. The Lua bucket is
checked against the in-memory one: the same takes at the same times give the same decisions.
"""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from bastion.access.shared_state_config import SharedStateConfig
from bastion.serving.redis_state import RedisState
from bastion.serving.state import MemoryState
from serve_helpers import (LIMITS, RedisServer, bearer, needs_redis, small_repository, start_serve_process, token,
                           world, write_state_policy)
from test_tokens_support import malleate

pytestmark = needs_redis

REPLICA_LIMITS = LIMITS.replace("rate = 0.05\nburst = 3", "rate = 1\nburst = 5")


def replica_policy(name: str, url: str) -> str:
    """The serving tests' policy with one-time jti, sharing state at ``url`` under its own key prefix."""
    state = f'[state]\nurl = "{url}"\nkey_prefix = "{name}"\n'
    return str(write_state_policy(world().root / f"{name}.toml", state, one_time=True, limits=REPLICA_LIMITS))


class Replicas:
    def __init__(self, folder, redis: RedisServer, policy: str, repository):
        self.folder, self.redis, self.policy = folder, redis, policy
        args = ["--repository", str(repository), "--policy", policy, "--port", "0"]
        with ThreadPoolExecutor(2) as pool:
            started = list(pool.map(lambda n: start_serve_process(
                [*args, "--audit-log", str(folder / f"audit-{n}.jsonl")], folder / f"serve-{n}.log"), "ab"))
        self.procs = [proc for proc, _ in started]
        self.urls = [f"http://127.0.0.1:{port}" for _, port in started]
        self.clients = [httpx.Client(base_url=url, timeout=30) for url in self.urls]

    def log(self, n: int) -> str:
        return (self.folder / f"serve-{'ab'[n]}.log").read_text()

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        for client in self.clients:
            while client.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "a replica never became ready"
                time.sleep(0.1)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except Exception:
                proc.kill()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, redis_server):
    folder = tmp_path_factory.mktemp("replicas")
    group = Replicas(folder, redis_server, replica_policy("replicas", redis_server.url),
                     small_repository(f"repo-replicas-{uuid.uuid4().hex[:8]}", "plain"))
    yield group
    group.close()


def ready(client: httpx.Client, text: str) -> httpx.Response:
    return client.get("/v2/models/plain/ready", headers=bearer(text))


def test_a_one_time_jti_spent_at_one_replica_is_refused_at_the_other_also_as_its_twin(replicas):
    replicas.wait_ready()
    a, b = replicas.clients
    once = token("ursula", jti=f"once-{uuid.uuid4().hex}")
    twin = malleate(once)
    assert twin != once
    assert ready(a, once).status_code == 200
    for client, text in ((b, once), (b, twin), (a, twin), (a, once)):
        replay = ready(client, text)
        assert replay.status_code == 401 and "replayed token" in replay.json()["error"], replay.text
    assert ready(b, token("ursula")).status_code == 200  # the other replica serves fresh tokens
    # What Redis holds: namespaced keys with hashed fields (no subject, address or jti in clear), all expiring.
    store = replicas.redis.client()
    keys = [key.decode() for key in store.scan_iter(match="bastion:replicas:*")]
    assert any(":jti:" in key for key in keys)  # (the failed-auth buckets of the replays may have expired)
    for key in keys:
        assert re.fullmatch(r"bastion:replicas:(jti|rate|fail):[0-9a-f]{64}", key), key
        assert 0 < store.pttl(key) <= (600 + 30 + 60 + 1) * 1000
    assert "once-" not in " ".join(keys) and "ursula" not in " ".join(keys)


def test_a_callers_combined_rate_across_replicas_stays_within_its_limit(replicas):
    replicas.wait_ready()
    subject = f"rita-{uuid.uuid4().hex[:8]}"
    tokens = [token(subject, "limited") for _ in range(20)]  # one-time jti: one token per request
    started = time.monotonic()
    answers = [ready(replicas.clients[i % 2], text) for i, text in enumerate(tokens)]
    elapsed = time.monotonic() - started
    codes = [answer.status_code for answer in answers]
    allowed = codes.count(200)
    # A bucket of 5 refilled at 1/s: never more than 5 + elapsed seconds' worth, whichever replica answered.
    assert set(codes) <= {200, 429}, codes
    assert 5 <= allowed <= 5 + elapsed, (codes, elapsed)
    assert 200 in codes[0::2] and 200 in codes[1::2]  # both replicas let some through...
    assert 429 in codes[0::2] and 429 in codes[1::2]  # ...and both refused once the shared bucket was empty
    assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 429)
    limited = sum(float(re.search(r'bastion_rate_limited_total\{scope="limited"\} (\S+)',
                                  client.get("/metrics").text)[1]) for client in replicas.clients)
    assert limited >= codes.count(429)


def test_redis_stopped_mid_run_fails_closed_and_the_replicas_recover_when_it_is_back(replicas):
    replicas.wait_ready()
    a, b = replicas.clients
    assert ready(a, token("sam")).status_code == 200
    replicas.redis.stop()
    try:
        for client in (a, b):
            refused = ready(client, token("sam"))
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert f"shared state redis://127.0.0.1:{replicas.redis.port}/0 is unavailable" in error, error
            assert "the request is refused" in error and int(refused.headers["retry-after"]) >= 1
            not_ready = client.get("/v2/health/ready")
            assert not_ready.status_code == 503 and "shared state" in not_ready.json()["reason"]
            assert client.get("/v2/health/live").status_code == 200
            errors = re.findall(r'bastion_shared_state_errors_total\{operation="\w+"\} (\S+)',
                                client.get("/metrics").text)
            assert sum(float(value) for value in errors) >= 1
            assert 'bastion_requests_total{code="503",model="",version=""}' in client.get("/metrics").text
    finally:
        replicas.redis.start()  # the same port; an empty store (no persistence)
    replicas.wait_ready()
    once = token("sam")
    assert ready(a, once).status_code == 200
    assert ready(b, once).status_code == 401  # sharing again: the replay is refused at the other replica
    for n in (0, 1):
        log = replicas.log(n)
        assert "is unavailable" in log and "is reachable again" in log and "Traceback" not in log, log[-3000:]


# -- the Lua bucket against the in-memory one -----------------------------------------------------
@pytest.fixture(scope="module")
def redis_state(redis_server):
    state = RedisState(SharedStateConfig(url=redis_server.url), f"bastion:bucket-{uuid.uuid4().hex[:8]}")
    yield state
    state.close()


steps = st.lists(st.tuples(st.sampled_from(["take", "take", "peek"]),
                           st.floats(0, 3, allow_nan=False).map(lambda dt: round(dt, 3))), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(rate=st.sampled_from([0.1, 0.5, 1.0, 3.0, 50.0]), burst=st.sampled_from([1.0, 2.0, 5.0, 7.5]), steps=steps)
def test_the_lua_bucket_decides_as_the_memory_bucket(redis_state, rate, burst, steps):
    memory, key, now = MemoryState(), f"rate\x00{uuid.uuid4().hex}", 1_700_000_000.0
    for operation, dt in steps:
        now += dt
        expected = getattr(memory, operation)(key, rate, burst, now)
        got = redis_state.bucket(operation, key, rate, burst, at=now)
        assert got[0] == expected[0] and got[1] == pytest.approx(expected[1], rel=1e-12, abs=1e-12), (operation, now)


def test_the_bucket_uses_redis_time_not_the_replicas(redis_state, redis_server):
    key = f"rate\x00{uuid.uuid4().hex}"
    # Two replicas whose clocks are an hour apart still draw on one bucket: the replica's `now` is ignored.
    decisions = [redis_state.take(key, 1.0, 3, now) for now in (0.0, 3600.0, 0.0, 3600.0)]
    assert [allowed for allowed, _ in decisions] == [True, True, True, False]
    assert 0.9 < decisions[-1][1] <= 1.0
    assert redis_state.peek(key, 1.0, 3, 7200.0)[0] is False
    assert 0 < redis_server.client().pttl(redis_state.key(key)) <= 4000  # gone once it would be full again


def test_a_restarted_server_without_the_script_gets_it_by_eval(redis_state, redis_server):
    store = redis_server.client()
    store.script_flush()
    from bastion.serving.redis_state import BUCKET_SHA

    assert store.script_exists(BUCKET_SHA) == [False]
    assert redis_state.take(f"rate\x00{uuid.uuid4().hex}", 1.0, 2, 0.0) == (True, 0.0)  # NOSCRIPT, then EVAL
    assert store.script_exists(BUCKET_SHA) == [True]


def test_spend_once_is_set_nx_with_an_expiry(redis_state, redis_server):
    key = f"jti\x00https://auth.test\x00{uuid.uuid4().hex}"
    assert redis_state.spend_once(key, 10, 0.0) is True
    assert redis_state.spend_once(key, 10, 0.0) is False and redis_state.is_spent(key, 0.0)
    assert (10 + 60 - 1) * 1000 < redis_server.client().pttl(redis_state.key(key)) <= (10 + 60) * 1000
    assert not redis_state.is_spent(f"jti\x00x\x00{uuid.uuid4().hex}", 0.0)
    lone_surrogate = "jti\x00iss\x00\ud800"  # a jti JSON can carry; it still maps to a key
    assert redis_state.spend_once(lone_surrogate, 1, 0.0) is True
    assert redis_state.spend_once(lone_surrogate, 1, 0.0) is False
