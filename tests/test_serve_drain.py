"""`bastion serve` as a process: SIGTERM stops accepting, finishes in-flight requests, flushes the audit log, exits 0."""

from __future__ import annotations

import json
import signal
import socket
import time

from serve_helpers import (audit_lines, bearer, infer_body, small_repository, start_serve_process, token,
                           wait_in_flight, world)


def test_sigterm_drains_in_flight_requests_flushes_the_audit_log_and_exits_0(tmp_path):
    repo = small_repository("repo-drain", "plain")
    audit = tmp_path / "audit.jsonl"
    proc, port = start_serve_process(["--repository", str(repo), "--policy", str(world().policy_path),
                                      "--port", "0", "--audit-log", str(audit)], tmp_path / "serve.log")
    try:
        auth = bearer(token("mia"))
        body = json.dumps(infer_body()).encode()
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow.sendall((f"POST /v2/models/plain/infer HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}"
                      f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:50])
        wait_in_flight(f"http://127.0.0.1:{port}", 1)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the listening socket closes: no new connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.05)
            except OSError:
                break
        else:
            raise AssertionError("still accepting connections after SIGTERM")
        assert proc.poll() is None  # waiting for the request in flight
        slow.sendall(body[50:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        slow.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [r for r in audit_lines(audit) if "request_id" in r]
    assert len(records) == 1 and records[0]["status"] == 200 and records[0]["subject"] == "mia"
    log = (tmp_path / "serve.log").read_text()
    assert "drained and stopped" in log and "Traceback" not in log
