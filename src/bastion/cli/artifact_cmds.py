"""`bastion keygen`, `sign`, `verify`, `attest` and `scan`: signed model artifacts.

Each command imports the library modules it uses inside its body, so it pays only for
its own (cryptography, PyJWT and the pickle scanner are not free to import).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from bastion.cli import main
from bastion.cli.common import PASSPHRASE_ENV, emit_json, json_option, passphrase_for, passphrase_for_new_key
from bastion.errors import KeyFileError, UsageError

HASH_CHOICES = click.Choice(["sha256", "blake2b", "blake3"])
hash_option = click.option("--hash", "hash_type", type=HASH_CHOICES, default="sha256", show_default=True,
                           help="Per-file hash. blake3 is the fast mode (model_signing's Python API verifies it; "
                                "its command line verifies only sha256).")
#: The most --max-expanded-gib takes (1 PiB): a bound, not a setting anyone needs.
MAX_EXPANDED_GIB = 1 << 20
workers_option = click.option("--workers", type=click.IntRange(1, 64), default=None,
                              help="Threads hashing files in parallel (default: one per core).")


@main.command()
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Private key file; KEY.pub is written beside it.")
@click.option("--type", "key_type", type=click.Choice(["ec-p256", "ec-p384", "ec-p521"]), default="ec-p256",
              show_default=True, help="ECDSA curve (the OpenSSF model-signing format accepts these).")
@click.option("--encrypt", is_flag=True,
              help=f"Encrypt the private key with a passphrase from ${PASSPHRASE_ENV} or a prompt (never an argument).")
@click.option("--force", is_flag=True, help="Replace existing key files.")
@json_option
def keygen(out, key_type, encrypt, force, as_json):
    """Write a signing key pair: KEY (private, mode 0600) and KEY.pub.

    Example: bastion keygen --out release.key
    """
    from bastion.access.envelope import key_hint
    from bastion.access.keys import generate_private_key, write_keypair
    from bastion.fsutil import check_output_file

    target = check_output_file(out, "key file")
    check_output_file(target.with_name(target.name + ".pub"), "public key file")
    if not force:  # check before prompting for a passphrase
        for existing in (target, target.with_name(target.name + ".pub")):
            if existing.exists():
                raise KeyFileError(f"{existing} exists; refusing to overwrite (pass --force to replace it)")
    passphrase = passphrase_for_new_key(encrypt)
    key = generate_private_key(key_type)
    key_path, pub_path = write_keypair(target, key, passphrase=passphrase, force=force)
    summary = {"private_key": str(key_path), "public_key": str(pub_path), "type": key_type,
               "encrypted": passphrase is not None, "key_hint": key_hint(key.public_key())}
    if as_json:
        emit_json(summary)
        return
    how = f"encrypted with the passphrase from {PASSPHRASE_ENV}" if passphrase and os.environ.get(PASSPHRASE_ENV) \
        else ("encrypted" if passphrase else "not encrypted")
    click.echo(f"wrote {key_path} (private, mode 0600, {how}) and {pub_path} ({key_type})")
    click.echo(f"  key hint {summary['key_hint']}")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--key", "-k", "key_path", required=True, type=click.Path(dir_okay=False), help="Private key (PEM).")
@click.option("--signature", "-s", type=click.Path(dir_okay=False),
              help="Signature file [default: PATH/model.sig for a directory, PATH.sig for a file].")
@hash_option
@workers_option
@json_option
def sign(path, key_path, signature, hash_type, workers, as_json):
    """Sign a model file or directory (OpenSSF model-signing format, "key" method).

    Example: bastion sign my-model/ --key release.key
    """
    from bastion.access.envelope import load_signing_key
    from bastion.access.signing import sign_model
    from bastion.fsutil import check_output_file

    if signature is not None:
        check_output_file(signature, "signature file")
    key = load_signing_key(key_path, passphrase_for(key_path))
    result = sign_model(path, key, signature=signature, hash_type=hash_type, workers=workers)
    summary = {"model": str(result.model), "signature": str(result.signature), "files": result.files,
               "hash_type": result.hash_type, "model_digest": result.root_digest,
               "ignored": list(result.ignore_paths)}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"signed {result.model} ({result.files} files, {result.hash_type}) -> {result.signature}")
    click.echo(f"  model digest sha256:{result.root_digest}")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--key", "-k", "key_path", type=click.Path(dir_okay=False),
              help="The signer's public key (PEM). Or give --policy.")
@click.option("--policy", "policy_ref",
              help="Decide as `bastion serve` does: the policy's [models] section (trusted signer and attester "
                   "keys, the rule naming the model: attestation, requirement).")
@click.option("--name", "model_name", help="With --policy: the name the model is served as [default: PATH's folder name].")
@click.option("--signature", "-s", type=click.Path(dir_okay=False),
              help="Signature file [default: PATH/model.sig for a directory, PATH.sig for a file].")
@click.option("--attestation", "-a", type=click.Path(dir_okay=False),
              help="Also verify this robustness attestation (made by `bastion attest`).")
@click.option("--attestation-key", type=click.Path(dir_okay=False),
              help="The evaluator's public key, if not the signer's.")
@click.option("--require", "-r", "requirement", metavar="EXPR",
              help='Require attested results, e.g. "robust_accuracy>=0.8 and flags==0" (implies an attestation).')
@workers_option
@json_option
def verify(path, key_path, policy_ref, model_name, signature, attestation, attestation_key, requirement, workers,
           as_json):
    """Verify a model against its signature (and optionally a robustness attestation). Exit 1 if it fails.

    Example: bastion verify my-model/ --key release.key.pub --require "robust_accuracy>=0.8"

    Example: bastion verify models/mnist-cnn-robust --policy gateway.toml
    """
    if policy_ref is not None:
        given = [flag for flag, value in (("--key", key_path), ("--signature", signature),
                                          ("--attestation", attestation), ("--attestation-key", attestation_key),
                                          ("--require", requirement)) if value]
        if given:
            raise UsageError(f"--policy decides with the policy's [models] keys and rules; drop {', '.join(given)}")
        return _verify_with_policy(path, policy_ref, model_name, as_json)
    if key_path is None:
        raise UsageError("give --key (the signer's public key) or --policy (a policy with a [models] section)")
    if model_name is not None:
        raise UsageError("--name applies with --policy")
    from bastion.access.attestation import default_attestation_path, verify_attestation
    from bastion.access.keys import load_public_key
    from bastion.access.requirements import parse_requirement
    from bastion.access.signing import verify_model

    if requirement is not None:
        parse_requirement(requirement)
    public_key = load_public_key(key_path)
    evaluator_key = load_public_key(attestation_key) if attestation_key else public_key
    result = verify_model(path, public_key, signature=signature, workers=workers)
    summary = {"verified": True, "model": str(result.model), "signature": str(result.signature),
               "files": result.files, "hash_type": result.hash_type, "model_digest": result.root_digest}
    attested = None
    if attestation or requirement:
        att_path = attestation or default_attestation_path(path)
        attested = verify_attestation(path, evaluator_key, att_path, require=requirement, signed=result,
                                      workers=workers)
        summary["attestation"] = {"file": str(attested.attestation), "evaluation": attested.evaluation,
                                  "requirements_met": list(attested.requirements_met)}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"OK: {result.model} matches {result.signature} ({result.files} files, {result.hash_type}), "
               f"signed by {key_path}")
    if attested is not None:
        ev = attested.evaluation
        worst = min(e["accuracy"] for e in ev["robust_accuracy"])
        click.echo(f"OK: {attested.attestation} attests this model: clean {ev['clean_accuracy']:.2%}, "
                   f"worst robust {worst:.2%} on {ev['n']} samples" + (f" ({ev['suite']})" if ev["suite"] else ""))
        for clause in attested.requirements_met:
            click.echo(f"  requirement met: {clause}")


def _verify_with_policy(path: str, policy_ref: str, name: str | None, as_json: bool) -> None:
    from bastion.access.model_trust import trusted_model
    from bastion.access.policy_file import load_policy

    policy = load_policy(policy_ref)
    if policy.models is None:
        raise UsageError(f"{policy.source}: has no [models] section (trusted signer keys and model rules)")
    if not Path(path).exists():
        raise UsageError(f"{path}: no such model file or directory")
    with trusted_model(path, policy.models, name) as trusted:
        summary = {"verified": True, "model": str(trusted.path), "name": trusted.name, **trusted.describe()}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"OK: {trusted.path} may be served as {trusted.name!r} under {policy.source}: "
               f"{summary['model_digest']} ({trusted.files} files, {trusted.hash_type}), signer key "
               f"{trusted.signer_hint[:16]}...")
    robustness = summary["robustness"]
    if robustness:
        worst = min(e["accuracy"] for e in robustness["robust_accuracy"])
        click.echo(f"OK: attested by key {robustness['attester_key_hint'][:16]}...: clean "
                   f"{robustness['clean_accuracy']:.2%}, worst robust {worst:.2%} on {robustness['n']} samples")
        for clause in robustness["requirements_met"]:
            click.echo(f"  requirement met: {clause}")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--report", required=True, type=click.Path(dir_okay=False),
              help="Benchmark report (report.json from `bastion bench`).")
@click.option("--key", "-k", "key_path", required=True, type=click.Path(dir_okay=False), help="Evaluator's private key.")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Attestation file [default: PATH/robustness.att.json, or PATH.att.json for a file].")
@hash_option
@workers_option
@json_option
def attest(path, report, key_path, out, hash_type, workers, as_json):
    """Sign a robustness attestation: this model's digest scored this report.

    Example: bastion attest my-model/ --report runs/report.json --key eval.key
    """
    from bastion.access.attestation import attest_model, read_report
    from bastion.access.envelope import load_signing_key
    from bastion.fsutil import check_output_file

    if out is not None:
        check_output_file(out, "attestation file")
    private_key = load_signing_key(key_path, passphrase_for(key_path))
    result = attest_model(path, read_report(report), private_key, out=out, hash_type=hash_type,
                          report_source=str(report), workers=workers)
    ev = result.evaluation
    summary = {"model": str(result.model), "attestation": str(result.attestation), "model_digest": result.root_digest,
               "hash_type": result.hash_type, "evaluation": ev}
    if as_json:
        emit_json(summary)
        return
    worst = min(e["accuracy"] for e in ev["robust_accuracy"])
    click.echo(f"attested {result.model} -> {result.attestation}")
    click.echo(f"  model digest sha256:{result.root_digest}; clean {ev['clean_accuracy']:.2%}, worst robust "
               f"{worst:.2%} on {ev['n']} samples; {len(ev['flags'])} attack-failure flag(s)")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--max-expanded-gib", type=click.FloatRange(min=0, max=MAX_EXPANDED_GIB, min_open=True), default=4.0,
              show_default=True,
              help="Most data to decompress per file (compressed archive members and streams); beyond it "
                   "the file is unscannable, as a compression bomb is.")
@json_option
def scan(paths, max_expanded_gib, as_json):
    """Scan files for pickles that would run code when loaded; nothing is loaded or run.

    Every file under a directory is examined, whatever its name or suffix, and every pickle a
    loader could reach in it, the way that loader reaches it: pickles in a row from the start
    (pickle.load; torch.load on a legacy file), zip archives as zip readers find them (so a
    pickle glued in front of a torch zip is seen both ways), members of any name, zips and tars
    inside them, compressed streams, object arrays in .npy/.npz data; files that claim to be
    safetensors are checked to be. Each global a pickle would import is checked against an
    allowlist of what a tensor checkpoint needs (torch tensor rebuilding, numpy arrays).
    A symlink is followed only into the scanned tree.

    Exit status: 0 every reachable stream was scanned and names only allowed globals; 1 a
    global outside the allowlist was found; 2 something could not be scanned (encrypted,
    corrupt, truncated, a symlink out of the tree, a size or nesting limit) and nothing
    dangerous was found.

    Example: bastion scan checkpoints/
    """
    from bastion.access.pickle_scan import ScanLimits, printable, scan_path

    if not math.isfinite(max_expanded_gib):  # click's range lets NaN through
        raise UsageError(f"--max-expanded-gib must be a number in (0, {MAX_EXPANDED_GIB:,}], got {max_expanded_gib}")
    limits = ScanLimits(max_expanded_bytes=int(max_expanded_gib * (1 << 30)))
    results = [r for p in paths for r in scan_path(p, limits)]
    findings = sum(len(r.findings) for r in results)
    unscannable = [r for r in results if r.unscannable]
    if as_json:
        emit_json({"files": [r.to_dict() for r in results], "findings": findings,
                   "unscannable": sum(len(r.unscannable) for r in results), "errors": len(unscannable)})
    else:
        for r in results:
            for f in r.findings:
                click.echo(printable(f"{f.location}: {f.global_name} ({f.opcode}): {f.reason}"))
            for u in r.unscannable:
                click.echo("error: " + printable(f"{u.location}: unscannable: {u.reason}"), err=True)
            if r.clean:
                detail = f"{r.pickles} pickle(s)" if r.pickles else (r.note or "nothing to scan")
                click.echo(printable(f"{r.file}: clean ({detail})"))
        if not results:
            click.echo("no files found", err=True)
        elif not any(r.pickles or r.findings or r.unscannable for r in results):
            click.echo("no pickle-based files found (every file was examined)", err=True)
        dangerous = sum(1 for r in results if r.findings)
        click.echo(f"{len(results)} file(s) scanned: {sum(r.clean for r in results)} clean, {findings} "
                   f"finding(s) in {dangerous}, {len(unscannable)} not fully scannable")
    if findings:
        raise click.exceptions.Exit(1)
    if unscannable:
        raise click.exceptions.Exit(2)
