"""Hostile inputs for `tests/test_cli_hostile.py`: bad files, bad TOML, forged .npz headers, bundles
whose metadata lies, keys, reports and policies, all written once into one folder.

Every name below is a file or folder in that folder; the table of command lines refers to them as
``{d}/NAME``. Good inputs are tiny: four MNIST test images, a quick suite, a one-epoch recipe.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from bastion.access.keys import generate_private_key, write_keypair
from bastion.access.signing import sign_model
from bastion.data import load_data
from bastion.models.zoo import zoo_path
from tests.fixtures_pkg.tiny import tiny_mlp

REPORT = Path(__file__).parent / "data" / "mnist-cnn-robust-quick-20.report.json"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header_only(shape: tuple, descr: str = "<f4", data: bytes = b"") -> bytes:
    """A .npy member whose header declares ``shape`` of ``descr`` but which holds only ``data``."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    pad = (64 - (10 + len(header) + 1) % 64) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def build(d: Path) -> Path:
    """Write every hostile and good input into ``d``; return ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    mnist = load_data("mnist", "test").take(4)
    x, y = mnist.x.numpy(), mnist.y.numpy()

    # Data: good, and wrong in every way a .npz can be.
    np.savez(d / "good.npz", x=x, y=y)
    np.savez(d / "good4x4.npz", x=np.random.default_rng(0).random((4, 1, 4, 4), dtype=np.float32),
             y=np.array([0, 1, 2, 0]))
    np.savez(d / "labels10.npz", x=x, y=np.array([0, 1, 2, 10]))
    np.savez(d / "labels99.npz", x=x, y=np.array([99, 1, 2, 3]))
    np.savez(d / "labels2p62.npz", x=x, y=np.array([0, 1, 2, 2 ** 62]))
    np.savez(d / "labels-neg.npz", x=x, y=np.array([0, -1, 2, 3], dtype=np.int8))
    np.savez(d / "labels-uint64.npz", x=x, y=np.array([0, 1, 2, 2 ** 64 - 1], dtype=np.uint64))
    np.savez(d / "labels-frac.npz", x=x, y=np.array([0, 1.5, 2, 3]))
    np.savez(d / "labels-nan.npz", x=x, y=np.array([0, np.nan, 2, 3]))
    np.savez(d / "labels-bool.npz", x=x, y=np.array([True, False, True, False]))
    np.savez(d / "labels-2d.npz", x=x, y=y.reshape(2, 2))
    np.savez(d / "labels-short.npz", x=x, y=y[:2])
    np.savez(d / "size8.npz", x=x[:, :, :8, :8].copy(), y=y)
    np.savez(d / "rgb.npz", x=np.repeat(x, 3, axis=1), y=y)
    np.savez(d / "flat.npz", x=x.reshape(4, -1), y=y)
    np.savez(d / "x1d.npz", x=x[:, 0, 0, 0].copy(), y=y)
    np.savez(d / "x5d.npz", x=x[:, None], y=y)
    np.savez(d / "complex.npz", x=x.astype(np.complex64), y=y)
    np.savez(d / "float16.npz", x=x.astype(np.float16), y=y)
    np.savez(d / "int64-1000.npz", x=(x * 1000).astype(np.int64), y=y)
    np.savez(d / "uint16.npz", x=(x * 255).astype(np.uint16), y=y)
    np.savez(d / "bool-x.npz", x=x > 0.5, y=y)
    np.savez(d / "nan-x.npz", x=np.full_like(x, np.nan), y=y)
    np.savez(d / "range-x.npz", x=x * 300, y=y)
    np.savez(d / "float64-huge.npz", x=np.full(x.shape, 1e300), y=y)
    np.savez(d / "empty-x.npz", x=x[:0], y=y[:0])
    np.savez(d / "no-y.npz", x=x)
    np.savez(d / "strings.npz", x=np.array(["a", "b", "c", "d"]), y=y)
    np.savez(d / "object.npz", x=np.array([1, "a", None, 2.0], dtype=object), y=y)
    write_zip(d / "huge-header.npz", {"x.npy": npy_header_only((10 ** 12, 1, 28, 28), data=b"\0" * 64),
                                      "y.npy": npy_bytes(y)})
    write_zip(d / "huge-y.npz", {"x.npy": npy_bytes(x), "y.npy": npy_header_only((10 ** 13,), "<i8")})
    write_zip(d / "truncated.npz", {"x.npy": npy_header_only((4, 1, 28, 28), data=b"\0" * 64), "y.npy": npy_bytes(y)})
    write_zip(d / "negative-shape.npz", {"x.npy": npy_header_only((-4, 1, 28, 28)), "y.npy": npy_bytes(y)})
    write_zip(d / "object-header.npz", {"x.npy": npy_header_only((4,), "|O", b"\x80\x04N."), "y.npy": npy_bytes(y)})
    write_zip(d / "not-npy-member.npz", {"x.npy": npy_bytes(x), "y.npy": npy_bytes(y), "notes.txt": b"hi"})
    write_zip(d / "bad-magic.npz", {"x.npy": b"not an array at all", "y.npy": npy_bytes(y)})
    (d / "npy-renamed.npz").write_bytes(npy_bytes(x))
    (d / "pickle.npz").write_bytes(pickle.dumps({"x": x, "y": y}))
    (d / "garbage.npz").write_bytes(os.urandom(512))
    (d / "empty.npz").write_bytes(b"")
    (d / "dir.npz").mkdir()
    (d / "data.csv").write_text("1,2,3\n")
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, d / "good.pt")
    (d / "garbage.pt").write_bytes(os.urandom(512))
    torch.save({"x": [[1, 2], [3]], "y": [0, 1]}, d / "ragged.pt")
    torch.save([1, 2, 3], d / "wrong-structure.pt")
    torch.save({"x": torch.from_numpy(x).to_sparse(), "y": torch.from_numpy(y)}, d / "sparse-x.pt")
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y).to_sparse()}, d / "sparse-y.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: sparse CSR is in beta
        torch.save({"x": torch.from_numpy(x.reshape(len(x), -1)).to_sparse_csr(), "y": torch.from_numpy(y)},
                   d / "csr-x.pt")

    # Text files: garbage, not UTF-8, malformed TOML, nested too deeply, an integer of 5,000 digits.
    (d / "garbage.toml").write_bytes(os.urandom(300))
    (d / "latin1.toml").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    (d / "malformed.toml").write_text("eps = [0.1,\n")
    (d / "deep.toml").write_text("eps = " + "[" * 5000 + "]" * 5000 + "\n")
    (d / "bigint.toml").write_text("eps = " + "1" * 5000 + "\n")
    (d / "empty.toml").write_bytes(b"")
    (d / "dir.toml").mkdir()

    # Suites.
    attack = '\n[[attack]]\nname = "fgsm"\n'
    for name, text in {"eps-1e308": "eps = 1e308" + attack, "eps-inf": "eps = inf" + attack,
                       "eps-nan": "eps = nan" + attack, "eps-neg": "eps = -0.1" + attack,
                       "eps-str": 'eps = "big"' + attack, "eps-int-huge": "eps = 1000000000000000000000" + attack,
                       "eps-5": "eps = 5" + attack, "eps-empty": "eps = []" + attack, "no-eps": attack,
                       "l2-eps-huge": 'norm = "l2"\neps = 29.0' + attack,
                       "steps-true": 'eps = 0.1\n[[attack]]\nname = "pgd"\nsteps = true\n',
                       "steps-huge": 'eps = 0.1\n[[attack]]\nname = "pgd"\nsteps = 1000000000000000000\n',
                       "steps-frac": 'eps = 0.1\n[[attack]]\nname = "pgd"\nsteps = 1.5\n',
                       "steps-neg": 'eps = 0.1\n[[attack]]\nname = "pgd"\nsteps = -3\n',
                       "unknown-attack": 'eps = 0.1\n[[attack]]\nname = "nope"\n',
                       "unknown-param": 'eps = 0.1\n[[attack]]\nname = "pgd"\nstepz = 3\n',
                       "no-attack": "eps = 0.1\n", "fast": 'eps = 0.1\n[[attack]]\nname = "pgd"\nsteps = 2\n'}.items():
        (d / f"suite-{name}.toml").write_text(text)

    # Training recipes (one tiny epoch when good).
    tiny = ('[recipe]\nmethod = "clean"\n[data]\nholdout = 0\n[optimizer]\nname = "adam"\nlr = 0.001\n'
            'epochs = 1\nbatch_size = 4\n[threat]\neps = 0.1\n')
    (d / "recipe-tiny.toml").write_text(tiny)
    for name, (old, new) in {"epochs-0": ("epochs = 1", "epochs = 0"),
                             "epochs-huge": ("epochs = 1", "epochs = 100000000000000000"),
                             "epochs-true": ("epochs = 1", "epochs = true"),
                             "lr-inf": ("lr = 0.001", "lr = inf"), "lr-1e308": ("lr = 0.001", "lr = 1e308"),
                             "lr-nan": ("lr = 0.001", "lr = nan"),
                             "eps-1e308": ("eps = 0.1", "eps = 1e308"), "eps-inf": ("eps = 0.1", "eps = inf"),
                             "batch-huge": ("batch_size = 4", "batch_size = 1000000000000"),
                             "holdout-huge": ("holdout = 0", "holdout = 1000000000000000000000"),
                             "method-bogus": ('method = "clean"', 'method = "bogus"'),
                             "unknown-key": ("holdout = 0", "holdout = 0\ncolour = 3"),
                             "seed-huge": ('method = "clean"', 'method = "clean"\nseed = 100000000000000000000000')}.items():
        (d / f"recipe-{name}.toml").write_text(tiny.replace(old, new))
    (d / "recipe-steps-huge.toml").write_text(tiny.replace('method = "clean"', 'method = "pgd-at"')
                                              + "[attack]\nsteps = 1000000000000000000\n")
    (d / "recipe-no-method.toml").write_text("[recipe]\nname = 'x'\n")

    # Sanitiser recipes.
    (d / "sanitize-empty.toml").write_text('name = "nothing"\n')
    (d / "sanitize-no-transforms.toml").write_text('name = "nothing"\ntransforms = []\n')
    (d / "sanitize-bits-0.toml").write_text('[[transforms]]\ntype = "bit-depth"\nbits = 0\n')
    (d / "sanitize-bits-huge.toml").write_text('[[transforms]]\ntype = "bit-depth"\nbits = 100000000000000000000\n')
    (d / "sanitize-sigma-inf.toml").write_text('[[transforms]]\ntype = "gaussian-noise"\nsigma = inf\n')
    (d / "sanitize-unknown.toml").write_text('[[transforms]]\ntype = "blur"\n')

    # Models: bundles whose metadata lies, programs that are not programs, a factory without a shape.
    for name, (old, new) in {"bundle-rgb": ("1,\n    28,", "3,\n    28,"),
                             "bundle-classes": ("num_classes = 10", "num_classes = 11"),
                             "bundle-classes-0": ("num_classes = 10", "num_classes = 0"),
                             "bundle-shape-huge": ("1,\n    28,", "100000,\n    100000,"),
                             "bundle-shape-neg": ("1,\n    28,", "-1,\n    28,")}.items():
        bundle = d / name
        shutil.copytree(zoo_path("mnist-cnn"), bundle)
        meta = bundle / "bastion.toml"
        text = meta.read_text()
        assert old in text, (name, old)
        meta.write_text(text.replace(old, new))
    for name, content in {"bundle-garbage": os.urandom(200), "bundle-latin1": "name = 'caf\xe9'\n".encode("latin-1")}.items():
        shutil.copytree(zoo_path("mnist-cnn"), d / name)
        (d / name / "bastion.toml").write_bytes(content)
    (d / "no-bundle").mkdir()
    (d / "pickle.pt2").write_bytes(pickle.dumps({"a": 1}))
    (d / "pickle-weights.pt").write_bytes(pickle.dumps(shutil.rmtree, protocol=4))  # torch warns on protocol 4
    (d / "empty.pt2").write_bytes(b"")
    (d / "garbage.pt2").write_bytes(os.urandom(400))
    write_zip(d / "zip.pt2", {"hello.txt": b"not a program"})
    module = tiny_mlp().eval()
    save_file(module.state_dict(), str(d / "tiny.safetensors"))
    (d / "garbage.safetensors").write_bytes(os.urandom(100))
    program = torch.export.export(module, (torch.rand(2, 1, 4, 4),),
                                  dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    torch.export.save(program, d / "tiny.pt2")

    # Keys, a signed model, reports, policies.
    key = generate_private_key("ec-p256")
    write_keypair(d / "k.key", key)
    (d / "k.key.pub").chmod(0o644)
    signed = d / "signed"
    shutil.copytree(zoo_path("mnist-cnn"), signed)
    sign_model(signed, key)
    (d / "report.json").write_text(REPORT.read_text())
    report = json.loads(REPORT.read_text())
    report["summary"]["n"] = 10 ** 400
    (d / "report-n-huge.json").write_text(json.dumps(report))
    report["summary"]["n"] = 20
    report["summary"]["clean_accuracy"] = float("nan")
    (d / "report-nan.json").write_text(json.dumps(report))
    (d / "report-list.json").write_text("[1, 2, 3]")
    (d / "keys").mkdir()
    shutil.copy(d / "k.key.pub", d / "keys" / "issuer.pub")
    policy = (Path(__file__).resolve().parents[1] / "policies" / "gateway.toml").read_text()
    (d / "policy.toml").write_text(policy)
    (d / "policy-no-audience.toml").write_text("[[issuers]]\niss = 'a'\nalgorithm = 'ES256'\nkey_file = 'keys/issuer.pub'\n")
    (d / "secret-short").write_bytes(b"short")
    (d / "repo").mkdir()
    (d / "a-file").write_text("I am a file, not a folder\n")
    return d


def make_output_dir(root: Path) -> Path:
    """A fresh folder for one case's outputs, holding what outputs must not replace."""
    root.mkdir(parents=True)
    (root / "existing-dir").mkdir()
    (root / "run-with-dirs" / "checkpoint.json").mkdir(parents=True)  # a report folder with a dir in the way
    (root / "existing-file").write_text("keep me\n")
    os.mkfifo(root / "fifo")
    return root


def listing(root: Path) -> list[str]:
    """Every path under ``root`` (relative), so a test can tell whether a refused command left anything."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
