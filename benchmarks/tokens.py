"""Token verification throughput: bastion's full policy check vs bare PyJWT, same keys, same tokens.

For each algorithm (EdDSA, ES256, RS256, HS256) this measures, interleaved in
random order within each round (the machine's speed drifts), medians over rounds:

  bare         jwt.decode(token, key_object, algorithms=[alg], audience, issuer, leeway,
               options={"require": [...], "strict_aud": True}) -- careful PyJWT use
  policy       Policy.authorize(token, "predict", model) from a TOML policy, cache off:
               size limit, header checks, PyJWT, claim types, revocation, scopes, decision
  cache-miss   the same with the verified-claims cache on but every token new to it
  bare-repeat  jwt.decode on one token again and again
  cached       Policy.authorize on that token again and again (verified-claims cache hits)

Targets: policy >= 0.90 x bare (overhead at most 10%), cached >= 3 x bare-repeat.

    python benchmarks/tokens.py [--rounds 15] [--tokens 200] [--batch-ms 60]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jwt

from bastion.access.keys import generate_private_key, write_keypair
from bastion.access.policy_file import load_policy
from bastion.access.tokens import issue_token

ISS, AUD, MODEL = "https://auth.example.com", "bastion-gateway", "mnist-cnn"
REQUIRED = ["exp", "iat", "iss", "aud", "sub"]
LEEWAY = 30
KEY_TYPES = {"EdDSA": "ed25519", "ES256": "ec-p256", "RS256": "rsa-2048", "HS256": None}


def policy_text(algorithm: str, key_line: str, cache_size: int) -> str:
    return f"""
audience = "{AUD}"
required_claims = {json.dumps(REQUIRED)}
leeway_seconds = {LEEWAY}
verified_cache_size = {cache_size}

[[issuers]]
iss = "{ISS}"
algorithm = "{algorithm}"
{key_line}

[scopes.predict]
actions = ["predict"]
models = ["mnist-cnn", "mnist-cnn-robust"]
"""


def setup(algorithm: str, folder: Path, n_tokens: int):
    """(signing key, verification key object, policies by name, tokens) for one algorithm."""
    if algorithm == "HS256":
        secret = os.urandom(32)
        os.environ["BENCH_HS256_SECRET"] = secret.hex()
        signing_key = verify_key = secret.hex().encode()
        key_line = 'secret_env = "BENCH_HS256_SECRET"'
    else:
        signing_key = generate_private_key(KEY_TYPES[algorithm])
        verify_key = signing_key.public_key()
        write_keypair(folder / f"{algorithm}.key", signing_key)
        key_line = f'key_file = "{algorithm}.key.pub"'
    policies = {}
    for name, cache_size in (("policy", 0), ("cache-miss", 1), ("cached", 1000)):
        path = folder / f"{algorithm}-{name}.toml"
        path.write_text(policy_text(algorithm, key_line, cache_size))
        policies[name] = load_policy(path)
    from bastion.access.token_keys import thumbprint

    kid = None if algorithm == "HS256" else thumbprint(verify_key)
    tokens = [issue_token(signing_key, algorithm, iss=ISS, aud=AUD, sub=f"caller-{i}", ttl_seconds=3600,
                          scope="predict", kid=kid, jti=f"jti-{i}") for i in range(n_tokens)]
    return verify_key, policies, tokens


def run(args) -> dict:
    options = {"require": REQUIRED, "strict_aud": True}
    table, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in KEY_TYPES:
            key, policies, tokens = setup(algorithm, Path(tmp), args.tokens)
            repeated = [tokens[0]] * len(tokens)

            def bare(batch, key=key, algorithm=algorithm):
                for token in batch:
                    jwt.decode(token, key, algorithms=[algorithm], audience=AUD, issuer=ISS, leeway=LEEWAY,
                               options=options)

            def bastion(batch, policy):
                for token in batch:
                    if not policy.authorize(token, "predict", MODEL).allowed:
                        raise SystemExit(f"{algorithm}: bastion denied a valid token")

            variants = {
                "bare": lambda: bare(tokens),
                "policy": lambda: bastion(tokens, policies["policy"]),
                "cache-miss": lambda: bastion(tokens, policies["cache-miss"]),
                "bare-repeat": lambda: bare(repeated),
                "cached": lambda: bastion(repeated, policies["cached"]),
            }
            for run_once in variants.values():  # warm up (and fill the cache)
                run_once()
            start = time.perf_counter()
            variants["bare"]()
            # Batches of about --batch-ms each, so one scheduler hiccup does not decide a sample.
            passes = max(1, round(args.batch_ms / 1000 / (time.perf_counter() - start)))
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                order = list(variants)
                random.shuffle(order)
                for name in order:
                    start = time.perf_counter()
                    for _ in range(passes):
                        variants[name]()
                    rates[name].append(passes * len(tokens) / (time.perf_counter() - start))
            median = {name: statistics.median(values) for name, values in rates.items()}
            ratios[algorithm] = {
                "policy_vs_bare": round(median["policy"] / median["bare"], 3),
                "cache_miss_vs_bare": round(median["cache-miss"] / median["bare"], 3),
                "cached_vs_bare": round(median["cached"] / median["bare-repeat"], 2),
            }
            table.append((algorithm, median))
    print(f"{'alg':<6} {'bare/s':>9} {'policy/s':>9} {'ratio':>6} {'miss/s':>9} {'ratio':>6} "
          f"{'bare-rep/s':>10} {'cached/s':>9} {'ratio':>6}")
    for algorithm, m in table:
        r = ratios[algorithm]
        print(f"{algorithm:<6} {m['bare']:>9.0f} {m['policy']:>9.0f} {r['policy_vs_bare']:>6.3f} "
              f"{m['cache-miss']:>9.0f} {r['cache_miss_vs_bare']:>6.3f} {m['bare-repeat']:>10.0f} "
              f"{m['cached']:>9.0f} {r['cached_vs_bare']:>6.2f}")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (medians over them)")
    parser.add_argument("--tokens", type=int, default=200, help="distinct tokens per pass")
    parser.add_argument("--batch-ms", type=float, default=60, help="approximate length of one timed batch")
    args = parser.parse_args()
    ratios = run(args)
    overhead_ok = all(r["policy_vs_bare"] >= 0.90 for r in ratios.values())
    cache_ok = all(r["cached_vs_bare"] >= 3 for r in ratios.values())
    print(f"overhead <= 10%: {'yes' if overhead_ok else 'NO'}; cached >= 3x bare: {'yes' if cache_ok else 'NO'}")
    print(json.dumps({"ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
