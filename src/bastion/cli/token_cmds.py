"""`bastion token issue | verify | jwks`: caller tokens (JWT) checked against an access policy.

Each command imports the library modules it uses inside its body, so it pays only for
its own (cryptography, PyJWT and the pickle scanner are not free to import).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import click

from bastion.cli import main
from bastion.cli.common import PASSPHRASE_ENV, emit_json, json_option, passphrase_for
from bastion.errors import TokenError, UsageError

_TTL = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)\s*([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_SECONDS = 366 * 86400  # the same ceiling as a policy's max_lifetime_seconds


def parse_ttl(text: str) -> float:
    """'15m', '1h', '900' or '2d' as seconds."""
    match = _TTL.fullmatch(text.strip().lower())
    if not match:
        raise UsageError(f"--ttl {text!r}: give a duration such as 900, 30s, 15m, 1h or 2d")
    seconds = float(match.group(1)) * _TTL_UNITS[match.group(2)]
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise UsageError(f"--ttl {text!r}: must be more than 0 and at most 366 days")
    return seconds


@main.group()
def token() -> None:
    """Issue caller tokens (JWT), verify them against a policy, publish a JWKS."""


@token.command("issue")
@click.option("--key", "key_path", type=click.Path(dir_okay=False),
              help=f"Private key (PEM) to sign with; its type picks the algorithm. "
                   f"Encrypted keys read ${PASSPHRASE_ENV} or prompt.")
@click.option("--secret-file", type=click.Path(dir_okay=False), help="HS256: file holding the shared secret.")
@click.option("--secret-env", metavar="VAR", help="HS256: environment variable holding the shared secret.")
@click.option("--alg", "rsa_alg", type=click.Choice(["RS256", "PS256"]), help="For an RSA key (default RS256).")
@click.option("--iss", required=True, help="Issuer (iss), as the policy names it.")
@click.option("--aud", required=True, help="Audience (aud), e.g. bastion-gateway.")
@click.option("--sub", required=True, help="Subject (sub): who the caller is.")
@click.option("--scope", "scopes", multiple=True,
              help="Scope(s) granted, e.g. --scope predict (repeatable; printable ASCII without space, '\"' or '\\').")
@click.option("--ttl", default="15m", show_default=True, help="Lifetime: 900, 30s, 15m, 1h, 2d.")
@click.option("--kid", help="Key id for the header (default: the key's RFC 7638 thumbprint; none for HS256).")
@click.option("--jti", default="auto", show_default=True, help="Token id: auto (random), none, or a value.")
def token_issue(key_path, secret_file, secret_env, rsa_alg, iss, aud, sub, scopes, ttl, kid, jti) -> None:
    """Sign a token and print it.

    Example: bastion token issue --key issuer.key --iss https://auth.example.com
    --aud bastion-gateway --sub alice --scope predict --ttl 15m
    """
    from bastion.access.token_keys import algorithm_for_key, thumbprint
    from bastion.access.tokens import issue_token, new_jti

    given = [name for name, value in (("--key", key_path), ("--secret-file", secret_file),
                                      ("--secret-env", secret_env)) if value]
    if len(given) != 1:
        raise UsageError("give exactly one of --key (a private key) or --secret-file / --secret-env (HS256)")
    if key_path:
        from bastion.access.keys import load_private_key

        key = load_private_key(key_path, passphrase_for(key_path))
        algorithm = algorithm_for_key(key.public_key(), rsa_alg or "RS256")
        if rsa_alg and algorithm != rsa_alg:
            raise UsageError(f"--alg {rsa_alg} applies to RSA keys only; this key signs {algorithm}")
        kid = kid or thumbprint(key.public_key())
    else:
        if rsa_alg:
            raise UsageError("--alg applies to RSA keys only")
        key, algorithm = _read_secret(secret_file, secret_env), "HS256"
    token_text = issue_token(key, algorithm, iss=iss, aud=aud, sub=sub, ttl_seconds=parse_ttl(ttl),
                             scope=" ".join(scopes) if scopes else None, kid=kid,
                             jti=new_jti() if jti == "auto" else None if jti == "none" else jti)
    click.echo(token_text)


def _read_secret(secret_file: str | None, secret_env: str | None) -> bytes:
    from bastion.access.token_keys import read_secret_file, secret_problem

    if secret_env:
        value = os.environ.get(secret_env)
        if not value:
            raise UsageError(f"--secret-env {secret_env}: the variable is not set")
        secret = value.encode("utf-8")
    else:
        secret = read_secret_file(secret_file)
    problem = secret_problem(secret)
    if problem:
        raise UsageError(problem)
    return secret


@token.command("verify")
@click.argument("token_text", metavar="TOKEN")
@click.option("--policy", "policy_ref", required=True, help="Policy name (e.g. gateway) or path to a .toml file.")
@click.option("--action", help="Action to authorize, e.g. predict, attack, train, admin.")
@click.option("--model", help="Model the action is on (needs --action).")
@json_option
def token_verify(token_text, policy_ref, action, model, as_json) -> None:
    """Verify TOKEN (or - for stdin) under a policy; exit 1 if it is rejected or the action denied.

    Example: bastion token verify "$TOKEN" --policy gateway --action predict --model mnist-cnn
    """
    from bastion.access.names import model_name_problem
    from bastion.access.policy import Decision, action_problem
    from bastion.access.policy_file import load_policy

    if model and not action:
        raise UsageError("--model needs --action (what the caller wants to do with the model)")
    if action and action_problem(action):
        raise UsageError(f"--action: {action_problem(action)}")
    if model and model_name_problem(model):
        raise UsageError(f"--model: {model_name_problem(model)}")
    policy = load_policy(policy_ref)
    if token_text == "-":
        token_text = sys.stdin.read(policy.verifier.rules.max_token_bytes + 1024)
    token_text = token_text.strip()
    if action:
        decision = policy.authorize(token_text, action, model)
    else:
        try:
            verified = policy.verify(token_text)
        except TokenError as exc:
            decision = Decision(False, f"rejected: {exc}")
        else:
            decision = Decision(True, f"valid: token of {verified.subject[:80]!r} from issuer {verified.issuer[:80]!r}",
                                token=verified)
    if as_json:
        emit_json({**decision.to_dict(), "policy": policy.source})
    else:
        click.echo(decision.reason)
        if decision.token is not None:
            verified = decision.token
            left = verified.expires_at - time.time()
            click.echo(f"  subject {verified.subject}, issuer {verified.issuer}, "
                       f"scopes {' '.join(verified.scopes) or '(none)'}, expires in {max(left, 0):.0f} s")
        click.echo(f"  policy {policy.source}")
    if not decision.allowed:
        raise click.exceptions.Exit(1)


@token.command("jwks")
@click.argument("public_keys", metavar="KEY.pub...", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--alg", "rsa_alg", type=click.Choice(["RS256", "PS256"]),
              help="Mark RSA keys with this alg (otherwise RSA keys carry no alg).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the JWKS to this file instead.")
def token_jwks(public_keys, rsa_alg, out) -> None:
    """Print a JWKS for the given public keys, each with its RFC 7638 thumbprint as kid."""
    from bastion.access.jwks import jwks_document
    from bastion.access.keys import load_public_key

    from bastion.fsutil import atomic_write_text, check_output_file

    if out:
        check_output_file(out, "--out file")
    keys = [load_public_key(path) for path in public_keys]
    document = jwks_document(keys, rsa_alg)
    if out:
        atomic_write_text(out, json.dumps(document, indent=2) + "\n")
        click.echo(f"wrote {len(keys)} key(s) to {out}", err=True)
        return
    emit_json(document)
