"""Sign and verify a model directory with bastion and with the OpenSSF `model_signing` API, side by side.

    python benchmarks/signing.py [--size 2GiB] [--shards 4] [--repeats 3]

Creates a temporary model directory (``--shards`` weight files sharing
``--size`` bytes, plus three small files), one ECDSA P-256 key, and times, in
interleaved rounds (medians reported): model_signing sign/verify (sha256, its
default; and its blake3 mode for reference), bastion sign/verify with sha256
(the default) and with blake3 (the fast mode), and single-thread hashlib
SHA-256 over the same bytes as the floor of what one core can do.

Prints a table and, last, one JSON line: {"ratios": {...}}. Time ratios are
bastion / model_signing (below 1: bastion is faster); speedups are
model_signing / bastion; throughput fractions are bastion's bytes/s over
single-thread hashlib's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 8 * 1024 * 1024


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 512MiB, 1000000)")
    unit = (match.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(unit or " "))


def make_model(root: Path, size: int, shards: int) -> Path:
    model = root / "model"
    model.mkdir()
    block = os.urandom(CHUNK)
    per_shard = size // shards
    for i in range(shards):
        with open(model / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as fh:
            left = per_shard
            while left > 0:
                # A fresh salt per block so no two blocks are equal, without paying os.urandom for every byte.
                piece = (i.to_bytes(4, "little") + left.to_bytes(8, "little") + block)[:min(CHUNK, left)]
                fh.write(piece)
                left -= len(piece)
    (model / "config.json").write_text(json.dumps({"layers": 32, "hidden": 4096}))
    (model / "tokenizer.json").write_bytes(os.urandom(2_000_000))
    (model / "README.md").write_text("benchmark model\n")
    return model


def hashlib_floor(model: Path) -> float:
    """Seconds for one thread to SHA-256 every file (what a single core can do)."""
    start = time.perf_counter()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    for path in sorted(model.rglob("*")):
        if path.is_file() and path.name != "model.sig":
            digest = hashlib.sha256()
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(buffer):
                    digest.update(view[:n])
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2GiB"), help="total model size (default 2GiB)")
    parser.add_argument("--shards", type=int, default=4, help="weight files sharing --size (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the temporary model")
    args = parser.parse_args()

    import model_signing

    from bastion.access.keys import generate_private_key, load_public_key, write_keypair
    from bastion.access.signing import sign_model, verify_model

    root = Path(tempfile.mkdtemp(prefix="bastion-bench-signing-", dir=args.dir))
    try:
        print(f"creating {args.size / 2**30:.2f} GiB model ({args.shards} shards) in {root} ...", file=sys.stderr)
        model = make_model(root, args.size, args.shards)
        total = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        key = generate_private_key("ec-p256")
        key_path, pub_path = write_keypair(root / "key", key)
        public_key = load_public_key(pub_path)
        ms_sig, b_sig, b3_sig, ms3_sig = (root / n for n in ("ms.sig", "b.sig", "b3.sig", "ms3.sig"))

        def ms_hashing(algorithm):
            return model_signing.hashing.Config().use_file_serialization(hashing_algorithm=algorithm)

        def ms_sign(algorithm, sig):
            (model_signing.signing.Config().use_elliptic_key_signer(private_key=key_path)
             .set_hashing_config(ms_hashing(algorithm)).sign(model, sig))

        def ms_verify(sig):
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub_path).verify(model, sig)

        tasks = {
            "hashlib sha256, 1 thread": lambda: hashlib_floor(model),
            "model_signing sign sha256": lambda: ms_sign("sha256", ms_sig),
            "bastion sign sha256": lambda: sign_model(model, key, signature=b_sig),
            "bastion sign blake3": lambda: sign_model(model, key, signature=b3_sig, hash_type="blake3"),
            "model_signing sign blake3": lambda: ms_sign("blake3", ms3_sig),
            "model_signing verify sha256": lambda: ms_verify(ms_sig),
            "bastion verify sha256": lambda: verify_model(model, public_key, signature=b_sig),
            "bastion verify blake3": lambda: verify_model(model, public_key, signature=b3_sig),
            "model_signing verify blake3": lambda: ms_verify(ms3_sig),
        }
        times: dict[str, list[float]] = {name: [] for name in tasks}
        hashlib_floor(model)  # warm the page cache so every contender reads from memory
        for round_index in range(args.repeats):
            order = list(tasks) if round_index % 2 == 0 else list(reversed(tasks))  # interleave, alternate order
            for name in order:
                start = time.perf_counter()
                tasks[name]()
                times[name].append(time.perf_counter() - start)
        # Each tool must accept the other's signature, or the comparison means nothing.
        verify_model(model, public_key, signature=ms_sig)
        ms_verify(b_sig)

        median = {name: statistics.median(values) for name, values in times.items()}
        floor = median["hashlib sha256, 1 thread"]
        print(f"\n{total / 2**30:.2f} GiB in {args.shards + 3} files, {os.cpu_count()} cores, "
              f"median of {args.repeats} interleaved rounds\n")
        print(f"{'task':<30} {'seconds':>9} {'GiB/s':>7} {'x hashlib 1-thread':>19}")
        for name, seconds in median.items():
            print(f"{name:<30} {seconds:9.3f} {total / seconds / 2**30:7.2f} {floor / seconds:19.2f}")
        ratios = {
            "sign_time_sha256_bastion_over_model_signing": median["bastion sign sha256"] / median["model_signing sign sha256"],
            "verify_time_sha256_bastion_over_model_signing": median["bastion verify sha256"] / median["model_signing verify sha256"],
            "sign_speedup_bastion_blake3_vs_model_signing_sha256": median["model_signing sign sha256"] / median["bastion sign blake3"],
            "verify_speedup_bastion_blake3_vs_model_signing_sha256": median["model_signing verify sha256"] / median["bastion verify blake3"],
            "sign_time_blake3_bastion_over_model_signing_blake3": median["bastion sign blake3"] / median["model_signing sign blake3"],
            "verify_time_blake3_bastion_over_model_signing_blake3": median["bastion verify blake3"] / median["model_signing verify blake3"],
            "bastion_sha256_sign_throughput_vs_hashlib_1thread": floor / median["bastion sign sha256"],
            "bastion_sha256_verify_throughput_vs_hashlib_1thread": floor / median["bastion verify sha256"],
            "bastion_blake3_sign_throughput_vs_hashlib_sha256_1thread": floor / median["bastion sign blake3"],
            "model_signing_sha256_sign_throughput_vs_hashlib_1thread": floor / median["model_signing sign sha256"],
        }
        ratios = {k: round(v, 3) for k, v in ratios.items()}
        print()
        print(json.dumps({"ratios": ratios, "size_bytes": total, "files": args.shards + 3, "repeats": args.repeats}))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
