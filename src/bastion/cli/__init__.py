"""The `bastion` command line: parse, call the library, print.

Exit codes: 0 success; 1 a check said no (verification failed, access denied,
dangerous pickle found); 2 bad input or usage; 70 an internal error (a bug:
rerun with BASTION_DEBUG=1 for the traceback); 130 interrupted.

Commands load lazily: :data:`COMMANDS` names each command, the module that defines
it and its one-line help, so ``bastion --help`` lists every command without importing
any of them, and running a command imports only its own module. Commands that need
no model (token, keygen, sign, verify, attest, scan) therefore never import torch.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from bastion.errors import BastionError

USAGE_ERROR = 2
INTERNAL_ERROR = 70
INTERRUPTED = 130

#: Every command as (name, module, one-line help), in the order ``--help`` lists them.
#: To add a command, add its line here; its module registers it with ``@main.command()``.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("models", "bastion.cli.attack_cmds", "List the bundled model zoo."),
    ("attack", "bastion.cli.attack_cmds", "Run one attack; report clean and robust accuracy."),
    ("bench", "bastion.cli.bench_cmds", "Benchmark robustness with an attack suite (worst case)."),
    ("train", "bastion.cli.defense_cmds", "Train a model with a defense recipe; write a bundle."),
    ("sanitize", "bastion.cli.sanitize_cmds", "Sanitise inputs with a recipe, or wrap a model in one."),
    ("detect", "bastion.cli.sanitize_cmds", "Feature-squeezing detector: calibrate, then measure."),
    ("certify", "bastion.cli.sanitize_cmds", "Randomized smoothing: certified L2 radius per sample."),
    ("keygen", "bastion.cli.artifact_cmds", "Write a signing key pair: KEY (mode 0600) and KEY.pub."),
    ("sign", "bastion.cli.artifact_cmds", "Sign a model (OpenSSF model-signing format)."),
    ("verify", "bastion.cli.artifact_cmds", "Verify a model's signature (and its attestation)."),
    ("attest", "bastion.cli.artifact_cmds", "Sign a robustness attestation: model digest + report."),
    ("scan", "bastion.cli.artifact_cmds", "Scan pickle-based files for code they would run."),
    ("token", "bastion.cli.token_cmds", "Issue, verify and publish caller tokens (JWT)."),
    ("serve", "bastion.cli.serve_cmds", "Serve verified models to authorized callers (OIP v2 gateway)."),
)
_MODULE_OF = {name: module for name, module, _ in COMMANDS}


class BastionGroup(click.Group):
    """Loads each command's module on first use, and turns library exceptions into one-line exits."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in COMMANDS] + sorted(set(self.commands) - set(_MODULE_OF))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in _MODULE_OF:
            importlib.import_module(_MODULE_OF[name])  # its decorators register the command on `main`
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS`, so ``--help`` imports no command module."""
        rows = [(name, short_help) for name, _, short_help in COMMANDS]
        rows += [(name, self.commands[name].get_short_help_str(formatter.width)) for name in self.list_commands(ctx)
                 if name not in _MODULE_OF and not self.commands[name].hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.ClickException as exc:  # the group's own options, e.g. `bastion --frob`
            _fail_usage(exc)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as exc:  # a command's options: one line, like every other error
            _fail_usage(exc)
        except (click.exceptions.Exit, click.exceptions.Abort):
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


def _fail_usage(exc: click.exceptions.ClickException) -> None:
    """A bad option or argument: click's message on one line, with where to read more (exit 2).
    A group run without a command shows its help, as click does."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        raise exc
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    prefix = f"{ctx.command_path}: " if ctx is not None and ctx.parent is not None else ""
    _fail(f"{prefix}{exc.format_message()}{where}", USAGE_ERROR)


@click.group(cls=BastionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bastion")
def main() -> None:
    """bastion: adversarial robustness and model security for PyTorch classifiers.

    Attack a model (attack, bench), make it robust (train, sanitize, certify),
    control who loads and calls it (keygen, sign, verify, attest, scan, token),
    and serve only verified models to authorized callers (serve).
    """
