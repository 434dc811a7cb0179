"""Run bastion command lines in one real process, each with its real stdout and stderr (file
descriptors 1 and 2) captured, for the hostile cases that need a real process:

- torch's loggers and warnings write to the real stderr, where an in-process runner does not look;
- a FIFO given as an input would block a reader for ever: each command has an alarm;
- unreadable files and read-only folders stop root only when root's override capabilities are
  dropped, which the caller does for this process (``preexec_fn``), not for the test run.

Reads ``[{"id", "argv"}...]`` as JSON on stdin; writes ``{id: {"code", "stdout", "stderr"}}`` as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import traceback

TIMEOUT_SECONDS = 60


class Hung(Exception):
    pass


def _alarm(signum, frame):
    raise Hung()


def run(argv: list[str]) -> dict:
    from bastion.cli import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        signal.alarm(TIMEOUT_SECONDS)
        try:
            main.main(args=argv, prog_name="bastion", standalone_mode=True)
            code: int | str = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Hung:
            code = "hung"
        except BaseException:  # noqa: BLE001 - the point is to report whatever escaped
            traceback.print_exc()
            code = "raised"
        finally:
            signal.alarm(0)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return {"code": code, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def main() -> None:
    signal.signal(signal.SIGALRM, _alarm)
    cases = json.load(sys.stdin)
    results = {case["id"]: run(case["argv"]) for case in cases}
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
