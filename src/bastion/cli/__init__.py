"""The `bastion` command line: parse, call the library, print.

Exit codes: 0 success; 1 a check said no (verification failed, access denied,
dangerous pickle found); 2 bad input or usage; 70 an internal error (a bug:
rerun with BASTION_DEBUG=1 for the traceback); 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import click

from bastion.errors import BastionError

INTERNAL_ERROR = 70
INTERRUPTED = 130


class BastionGroup(click.Group):
    """Turns library exceptions into one-line messages and meaningful exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BastionError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted (finished work was saved; rerun with --resume where the command offers it)",
                  INTERRUPTED)
        except Exception as exc:  # a bug: keep the one-line promise, offer the traceback on request
            if os.environ.get("BASTION_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with BASTION_DEBUG=1 for details)",
                  INTERNAL_ERROR)


def _fail(message: str, code: int) -> None:
    click.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(code)


@click.group(cls=BastionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bastion")
def main() -> None:
    """bastion: adversarial robustness and model security for PyTorch classifiers.

    Attack a model (attack, bench), make it robust (train, sanitize, certify),
    and control who loads and calls it (keygen, sign, verify, attest, scan, token).
    """


# Each module registers its commands on `main`.
from bastion.cli import (  # noqa: E402,F401
    artifact_cmds, attack_cmds, bench_cmds, defense_cmds, sanitize_cmds, token_cmds,
)
from bastion.cli import serve_cmds  # noqa: E402,F401
