"""The audit log: one JSON line per authorization decision and per model load, unload or refusal.

Requests never wait on the disk: ``write`` only appends the record to an in-memory
queue, and a background thread serialises and writes whatever has queued, then
flushes. Nothing is dropped: the queue is unbounded (it holds a few hundred bytes per
request for the moment it takes to write them), a failed write keeps its records and is
retried, and ``close`` drains the queue, flushes and fsyncs before it returns. While
writes are failing ``healthy`` is False and the gateway refuses requests it could not
account for (fail closed).

Records hold no token: the caller is named by issuer and subject, the token by a hash
of its ``jti``.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

_STOP = object()
RETRY_SECONDS = 1.0
STOP_RETRIES = 3


def jti_hash(jti: str | None) -> str | None:
    return None if jti is None else hashlib.sha256(jti.encode("utf-8", "replace")).hexdigest()[:32]


def utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class AuditLog:
    """Append-only JSON lines at ``path`` (``-`` for standard output), written off the request path."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path == "-":
            self._file: TextIO = sys.stdout
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        # fsync means something only for a regular file (not /dev/null, a pipe or a terminal).
        self._sync = self.path != "-" and stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.written = 0
        self.error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="bastion-audit", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self.error is None

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record (a dict of plain values); returns at once."""
        if "time" not in record:
            record["time"] = utc_now()
        self._queue.put(record)

    def close(self) -> None:
        """Write everything queued, flush, fsync and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        if self._file is not sys.stdout:
            self._file.close()

    def _run(self) -> None:
        pending: list[str] = []
        stopping = False
        failures = 0
        while True:
            if not pending or self.error is None:
                item = self._queue.get() if not stopping else _STOP
                batch = [item]
                while True:  # everything that queued meanwhile goes out in one write
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                for record in batch:
                    if record is _STOP:
                        stopping = True
                    else:
                        pending.append(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            if pending:
                try:
                    self._file.write("".join(pending))
                    self._file.flush()
                    if stopping and self._sync:
                        os.fsync(self._file.fileno())
                    self.written += len(pending)
                    pending = []
                    self.error = None
                except OSError as exc:
                    self.error = f"audit log {self.path}: {exc.strerror or exc}"
                    failures += 1
                    if stopping and failures >= STOP_RETRIES:
                        # Shutting down and the file stays unwritable: the records go to stderr, not away.
                        print(f"bastion: {self.error}; the {len(pending)} unwritten audit records follow",
                              file=sys.stderr)
                        sys.stderr.write("".join(pending))
                        sys.stderr.flush()
                        pending = []
                    else:
                        print(f"bastion: {self.error}; retrying", file=sys.stderr)
                        time.sleep(RETRY_SECONDS)
                        continue
                else:
                    failures = 0
            if stopping and self._queue.empty():
                return
