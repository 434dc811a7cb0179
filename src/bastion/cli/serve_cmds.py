"""`bastion serve`: the Open Inference Protocol v2 gateway over verified models."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import click

from bastion.cli import main
from bastion.cli.common import emit_json, json_option, pick_device
from bastion.errors import CheckFailed, UsageError


@main.command()
@click.option("--repository", "-r", required=True, type=click.Path(file_okay=False),
              help="Folder of model bundles: NAME/ or NAME/VERSION/, each signed (model.sig) and, where the policy "
                   "asks, attested (robustness.att.json).")
@click.option("--policy", "-p", "policy_ref", required=True,
              help="Access policy (.toml path or catalog name): callers ([[issuers]], [scopes]), models ([models]) "
                   "and limits ([limits]).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--audit-log", default="bastion-audit.jsonl", show_default=True,
              help="Audit log: one JSON line per decision and per model load/unload (appended; - for stdout).")
@click.option("--device", default="cpu", show_default=True, help="Device the models run on (cpu, cuda, cuda:N).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Threads running forward passes [default: up to 4, one per core].")
@click.option("--forwarded-allow-ips", default="127.0.0.1", show_default=True,
              help="Proxies whose X-Forwarded-For names the client (for per-address limits behind nginx).")
@click.option("--check", is_flag=True, help="Verify and load every model, print what would be served and why not, "
                                            "and exit (1 if any model is refused).")
@click.option("--strict", is_flag=True, help="Refuse to start if any model is refused.")
@json_option
def serve(repository, policy_ref, host, port, audit_log, device, workers, forwarded_allow_ips, check, strict,
          as_json):
    """Serve signed, attested models over the Open Inference Protocol v2, to authorized callers only.

    Every /v2/models and /v2/repository request needs a bearer token the policy allows
    (predict, or admin for the repository); a model is served only if its signature (and,
    where the policy asks, its attestation and requirement) verify. SIGTERM drains: in-flight
    requests finish, the audit log is flushed, exit 0.

    Example: bastion serve --repository models/ --policy gateway.toml --port 8080
    """
    from bastion.access.policy_file import load_policy
    from bastion.serving.app import Gateway, GatewayConfig

    from bastion.fsutil import check_output_file

    folder = Path(repository)
    if not folder.is_dir():
        raise UsageError(f"--repository {repository}: no such folder")
    pick_device(device)  # a bad name is refused now, not when the first model loads
    if audit_log != "-" and not check:
        check_output_file(audit_log, "audit log", appends=True)
    policy = load_policy(policy_ref)
    # Bound before anything is written (the audit log): a port in use is one line and leaves nothing.
    sock = None if check else _bind(host, port)
    _setup_logging()
    config = GatewayConfig(repository=folder, policy=policy, audit_log=os.devnull if check else audit_log,
                           device=device, **({"workers": workers} if workers else {}))
    gateway = None
    try:
        gateway = Gateway(config)
        gateway.load_models()
    except BaseException:
        if gateway is not None:
            gateway.close()
        if sock is not None:
            sock.close()
        raise
    rows = _rows(gateway)
    refused = [row for row in rows if not row["served"]]
    if check or as_json:
        _print_rows(rows, as_json)
    if check:
        gateway.close()
        if refused:
            raise click.exceptions.Exit(1)
        return
    if strict and refused:
        gateway.close()
        sock.close()
        names = ", ".join(f"{r['name']}" + (f" {r['version']}" if r["version"] else "") for r in refused)
        raise CheckFailed(f"--strict: {len(refused)} model(s) refused ({names}); see the reasons above, or run "
                          "bastion serve --check")
    sock.listen(2048)  # only now: until the models are loaded, connections are refused, not queued
    if policy.models is None:
        click.echo(f"warning: {policy.source} has no [models] section, so no model is served "
                   "(the /authz endpoint still answers)", err=True)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    served = sum(1 for row in rows if row["served"])
    click.echo(f"bastion serve: listening on http://{shown}:{bound[1]} ({served} model version(s) served, "
               f"{len(refused)} refused; audit log {audit_log})", err=True)
    from bastion.serving.server import run

    run(gateway, sock=sock, forwarded_allow_ips=forwarded_allow_ips)
    click.echo("bastion serve: drained and stopped", err=True)


def _setup_logging() -> None:
    logger = logging.getLogger("bastion.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bastion serve: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _rows(gateway) -> list[dict]:
    rows = []
    repo = gateway.repository
    for name in sorted(repo.entries):
        entry = repo.entries[name]
        for version, model in sorted(entry.served.items()):
            robustness = model.trust["robustness"]
            rows.append({"name": name, "version": version, "served": True, "digest": model.trust["model_digest"],
                         "signer_key_hint": model.trust["signer_key_hint"],
                         "requirements_met": robustness["requirements_met"] if robustness else [],
                         "detector": model.rule.detector, "check": None, "reason": None})
        for refusal in entry.refusals:
            rows.append({"name": name, "version": refusal.version, "served": False, "check": refusal.kind,
                         "reason": refusal.reason})
    return rows


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        emit_json({"models": rows, "served": sum(r["served"] for r in rows),
                   "refused": sum(not r["served"] for r in rows)})
        return
    if not rows:
        click.echo("no model folders in the repository")
    for row in rows:
        label = row["name"] + (f" version {row['version']}" if row["version"] else "")
        if row["served"]:
            extra = "".join(f"; {clause}" for clause in row["requirements_met"])
            detector = f"; detector {row['detector']}" if row["detector"] != "off" else ""
            click.echo(f"serve   {label}: {row['digest'][:23]}..., signer {row['signer_key_hint'][:12]}...{extra}"
                       f"{detector}")
        else:
            click.echo(f"refuse  {label}: {row['check']}: {row['reason']}")
