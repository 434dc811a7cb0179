"""Shared fixtures for the artifact-signing tests: keys and small model directories."""

from __future__ import annotations

import os
from pathlib import Path

from bastion.access.keys import generate_private_key, write_keypair


def make_keys(directory: Path, name: str = "key", key_type: str = "ec-p256"):
    """Write NAME and NAME.pub under ``directory``; return (private key, private path, public path)."""
    key = generate_private_key(key_type)
    key_path, pub_path = write_keypair(directory / name, key)
    return key, key_path, pub_path


def make_model_dir(root: Path, big_bytes: int = 0) -> Path:
    """A model directory with nested files, an empty file, names that sort differently by component,
    and optionally one large (mostly sparse) file."""
    model = root / "model"
    (model / "sub" / "deep").mkdir(parents=True)
    (model / "a-b").mkdir()
    (model / "weights.bin").write_bytes(os.urandom(4096))
    (model / "sub" / "deep" / "layer.bin").write_bytes(b"layer" * 100)
    (model / "sub" / "config.json").write_text('{"layers": 3}')
    (model / "a-b" / "c.txt").write_text("c")
    (model / "a.txt").write_text("a")
    (model / "B").write_text("B")
    (model / "empty").write_bytes(b"")
    if big_bytes:
        with open(model / "big.safetensors", "wb") as fh:
            fh.write(os.urandom(1 << 20))
            fh.truncate(big_bytes)  # sparse tail: fast to create, still hashed byte by byte
    return model


def bench_report(robust: dict[float, float], *, n: int = 100, clean: float = 0.98, suite: str = "standard",
                 norm: str = "linf", fired: tuple[str, ...] = (), passed: tuple[str, ...] = (), **extra) -> dict:
    """A report in the shape `bastion bench` writes (schema bastion.bench.report/1), holding the fields an
    attestation reads plus whatever ``extra`` adds; ``robust`` maps eps to robust accuracy."""
    eps = sorted(robust)
    return {
        "schema": "bastion.bench.report/1", "created": "2026-01-01T00:00:00Z",
        "summary": {"model": "mnist-cnn", "suite": suite, "norm": norm, "eps": eps[-1], "n": n,
                    "clean_accuracy": clean, "robust_accuracy": robust[eps[-1]], "indicators_fired": list(fired)},
        "suite": {"name": suite, "norm": norm, "eps": eps},
        "results": [{"eps": e, "robust_accuracy": robust[e], "robust_accuracy_raw": robust[e]} for e in eps],
        "indicators": ([{"key": k, "status": "ok"} for k in passed] + [{"key": k, "status": "fired"} for k in fired]),
        **extra,
    }
