"""The policy's `state` key, and how the gateway behaves when the shared state cannot answer.

Against a Redis that refuses connections or one that accepts and never replies (no redis-server
needed): rate limits and one-time jti fail closed with 503 and Retry-After, `on_error = "open"`
lets requests past the rate limits only, a dead store is not asked again for a second, and a
hung one never blocks the event loop.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import httpx
import pytest

from bastion.access.policy_file import load_policy
from bastion.access.shared_state_config import SharedStateConfig, state_config
from bastion.errors import ConfigError
from bastion.serving.auth import Authorizer
from bastion.serving.redis_state import RETRY_SECONDS
from bastion.serving.state import MemoryState, open_state, state_namespace
from serve_helpers import AUD, bearer, free_port, small_repository, start_server, token, world, write_state_policy


class HungRedis:
    """A TCP server that accepts connections and never answers: a Redis that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.connections.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def hung():
    server = HungRedis()
    yield server
    server.close()


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def authorizer(name: str, state: str, *, one_time: bool = False, errors: list | None = None) -> Authorizer:
    policy = load_policy(write_state_policy(world().root / f"{name}.toml", state, one_time=one_time))
    return Authorizer(policy, on_state_error=errors.append if errors is not None else None)  # the store it names


# -- the policy key ------------------------------------------------------------------------------
def test_the_state_key_as_a_url_or_a_table():
    policy = load_policy(write_state_policy(world().root / "state-url.toml", 'state = "redis://10.0.0.5:6380/2"'))
    assert state_config(policy) == SharedStateConfig(url="redis://10.0.0.5:6380/2")
    assert not state_config(load_policy(world().policy_path)).shared  # no key: this process's memory
    table = ('[state]\nurl = "rediss://cache.internal:6379/0"\nkey_prefix = "prod"\ntimeout_seconds = 0.1\n'
             'on_error = "open"\nusername = "gw"\npassword_env = "TEST_REDIS_PASSWORD"\n')
    path = write_state_policy(world().root / "state-table.toml", table)
    config = state_config(load_policy(path, environ={"TEST_REDIS_PASSWORD": "hunter2-but-longer"}))
    assert (config.url, config.key_prefix, config.timeout_seconds, config.on_error, config.username) == (
        "rediss://cache.internal:6379/0", "prod", 0.1, "open", "gw")
    assert config.password == "hunter2-but-longer" and "hunter2" not in repr(config)
    assert config.rate_limits_fail_open


@pytest.mark.parametrize("state, key, problem", [
    ('state = "redis://:secret@10.0.0.5:6379/0"', "state", "never holds a secret"),
    ('state = "http://10.0.0.5:6379"', "state", "expected redis://"),
    ('state = "redis://10.0.0.5:6379/cache"', "state", "not a number"),
    ('state = "redis://10.0.0.5:6379/0?ssl_cert_reqs=none"', "state", "no options but"),
    ('state = "redis://10.0.0.5:99999/0"', "state", "not a URL"),
    ('state = "unix:///run/redis.sock?db=x"', "state", "takes a database number"),
    ('state = 6379', "state", "expected a URL"),
    ('[state]\nurl = "redis://h/0"\non_error = "maybe"', "state.on_error", "one-time jti always fail closed"),
    ('[state]\nurl = "redis://h/0"\ntimeout_seconds = 30', "state.timeout_seconds", "out of range"),
    ('[state]\nurl = "redis://h/0"\nkey_prefix = "a b"', "state.key_prefix", "letters, digits"),
    ('[state]\nurl = "redis://h/0"\npassword_env = "NOT_SET_ANYWHERE"', "state.password_env", "is not set"),
    ('[state]\nurl = "redis://h/0"\npassword = "x"', "state.password", "unknown key"),
    ('[state]\nurl = "memory"\nkey_prefix = "x"', "state.url", "not to memory"),
    ('[state]\non_error = "open"', "state.url", "missing"),
])
def test_bad_state_keys_fail_with_one_line_naming_file_and_key(state, key, problem):
    path = write_state_policy(world().root / "state-bad.toml", state)
    with pytest.raises(ConfigError) as info:
        load_policy(path, environ={})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: {key}: ") and problem in message, message


def test_keys_are_namespaced_by_the_audience_or_the_configured_prefix():
    digest = hashlib.sha256(AUD.encode()).hexdigest()[:16]
    assert state_namespace(SharedStateConfig(url="redis://h/0"), AUD) == f"bastion:{digest}"
    assert state_namespace(SharedStateConfig(url="redis://h/0", key_prefix="prod"), AUD) == "bastion:prod"
    assert isinstance(open_state(SharedStateConfig(), AUD), MemoryState)


# -- when Redis cannot answer ----------------------------------------------------------------------
def test_an_unreachable_redis_fails_closed_with_503_and_retry_after():
    errors: list[str] = []
    auth = authorizer("state-dead", f'state = "{dead_url()}"', errors=errors)
    outcome = auth.authorize(f"Bearer {token('tina')}", "10.0.0.1", "predict", "plain")
    assert outcome.status == 503 and outcome.headers["retry-after"] == "1"
    assert "is unavailable (Error 111" in outcome.reason
    assert "cannot be checked, so the request is refused" in outcome.reason
    assert errors == ["peek"]
    assert auth.authorize(f"Bearer {token('tina')}", "10.0.0.1", "predict", "plain").status == 503
    assert errors == ["peek", "peek"]  # counted again, though not asked again (see the next test)


def test_on_error_open_lets_requests_past_the_rate_limits_but_never_past_a_one_time_jti():
    errors: list[str] = []
    open_limits = f'[state]\nurl = "{dead_url()}"\non_error = "open"\n'
    auth = authorizer("state-open", open_limits, errors=errors)
    for _ in range(5):  # scope "limited" allows a burst of 3; unchecked, all pass
        assert auth.authorize(f"Bearer {token('uma', 'limited')}", "10.0.0.1", "predict", "plain").status == 200
    assert set(errors) == {"peek", "take"}
    once = authorizer("state-open-once", open_limits, one_time=True)
    outcome = once.authorize(f"Bearer {token('uma')}", "10.0.0.1", "predict", "plain")
    assert outcome.status == 503 and "the one-time jti cannot be checked" in outcome.reason


def test_a_hung_redis_costs_one_timeout_then_is_not_asked_again_for_a_while(hung):
    auth = authorizer("state-hung", f'[state]\nurl = "{hung.url}"\ntimeout_seconds = 0.2\n')
    started = time.monotonic()
    first = auth.authorize(f"Bearer {token('vic')}", "10.0.0.1", "predict", "plain")
    assert first.status == 503 and "Timeout" in first.reason, first.reason
    assert time.monotonic() - started < 5  # one short timeout, not redis-py's retries
    second = auth.authorize(f"Bearer {token('vic')}", "10.0.0.1", "predict", "plain")
    assert second.status == 503 and len(hung.connections) == 1  # refused at once, no new connection
    time.sleep(RETRY_SECONDS + 0.1)
    assert auth.authorize(f"Bearer {token('vic')}", "10.0.0.1", "predict", "plain").status == 503
    deadline = time.monotonic() + 5
    while len(hung.connections) < 2:  # tried again, on a fresh connection
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_hung_redis_never_blocks_the_event_loop_and_every_endpoint_refuses_in_json(hung):
    path = write_state_policy(world().root / "state-hung-http.toml", f'[state]\nurl = "{hung.url}"\n'
                                                                     'timeout_seconds = 2.0\n')
    server = start_server(small_repository("repo-state-hung", "plain"), path)
    try:
        answers = {}
        waiting = threading.Thread(target=lambda: answers.update(slow=httpx.get(
            server.url + "/v2/models/plain/ready", headers=bearer(token("wes")), timeout=30)))
        waiting.start()
        time.sleep(0.3)
        with server.client(timeout=10) as client:
            # The event loop answers while a decision waits on Redis (in a thread, for 2 s).
            assert client.get("/v2/health/live", timeout=1.2).status_code == 200
            assert waiting.is_alive()
            waiting.join(timeout=30)
            slow = answers["slow"]
            assert slow.status_code == 503 and "Timeout" in slow.json()["error"] and slow.headers["retry-after"]
            envoy = client.post("/authz/v2/models/plain/infer", headers=bearer(token("wes")))
            assert envoy.status_code == 503 and "shared state" in envoy.json()["error"]
            nginx = client.get("/authz", headers=bearer(token("wes"), **{"X-Original-URI": "/v2/models/plain/ready"}))
            assert nginx.status_code == 403 and nginx.headers["x-bastion-status"] == "503"
            assert nginx.headers["retry-after"] and "shared state" in nginx.json()["error"]
            not_ready = client.get("/v2/health/ready")
            assert not_ready.status_code == 503 and "shared state" in not_ready.json()["reason"]
            metrics = client.get("/metrics").text
            assert 'bastion_shared_state_errors_total{operation="peek"}' in metrics
            assert 'bastion_auth_denials_total{reason="invalid_token"} 0.0' in metrics  # a 503 is no auth denial
    finally:
        server.stop()
