"""Hostile command lines for every command: bad files, bad TOML, bad numbers, bad paths, wrong shapes.

Each must exit 2 (1 where a check said no) with exactly one line on stderr, starting ``error:``,
no traceback, and no output left behind (each case writes into a fresh folder that must end as it
began). The inputs are in ``hostile_world.py``; most cases run in this process (click's runner),
and the ones that need a real process (torch's loggers on the real stderr, FIFOs, unreadable
files and read-only folders) run in one subprocess (``cli_driver.py``).
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hostile_world import build, listing, make_output_dir

from bastion.cli import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

GOOD_ATTACK = "attack -a fgsm -e 0.1 --n 2 --data {d}/good.npz"
FACTORY = "--model tests.fixtures_pkg.tiny:tiny_mlp --weights {d}/tiny.safetensors"


def attack(extra: str = "", data: str = "good.npz", model: str = "mnist-cnn") -> str:
    return f"attack -a fgsm -e 0.1 --n 2 --model {model} --data {{d}}/{data} {extra}"


def bench(extra: str = "", suite: str = "{d}/suite-fast.toml", data: str = "good.npz") -> str:
    return f"bench --model mnist-cnn --suite {suite} --n 2 --data {{d}}/{data} --out {{o}}/run {extra}"


def train(extra: str = "", recipe: str = "{d}/recipe-tiny.toml", data: str = "good.npz") -> str:
    return f"train --recipe {recipe} --data {{d}}/{data} --out {{o}}/model {extra}"


def sanitize(extra: str = "", recipe: str = "sanitize-bitdepth", data: str = "good.npz", out: str = "{o}/s.npz") -> str:
    return f"sanitize --recipe {recipe} --input {{d}}/{data} --out {out} {extra}"


def detect(extra: str = "", data: str = "good.npz", n: str = "--calib-n 2 --n 2") -> str:
    return f"detect --model mnist-cnn --data {{d}}/{data} {n} {extra}"


def certify(extra: str = "", data: str = "good.npz", sigma: str = "0.25") -> str:
    return f"certify --model mnist-cnn --data {{d}}/{data} --n 2 --sigma {sigma} --n0 2 --samples 4 {extra}"


TOKEN = "token issue --iss a --aud b --sub c"
HUGE = "1" * 400

#: (command line, exit status, words the message must hold). {d}: the hostile inputs; {o}: this
#: case's output folder (holding existing-dir/, existing-file and a fifo).
CASES: list[tuple[str, int, str]] = [
    # --- every command: options that do not parse ---------------------------------------------
    ("--frobnicate", 2, "No such option"),
    ("no-such-command", 2, "No such command"),
    ("models --bogus", 2, "No such option"),
    ("models extra", 2, "unexpected extra argument"),
    ("attack -e 0.1", 2, "Missing option"),
    (attack("--n abc"), 2, "not a valid integer"),
    (attack("--norm l7"), 2, "--norm"),
    (f"bench --n {HUGE[:30]}x", 2, "not a valid integer"),
    # --- attack: data files --------------------------------------------------------------------
    (attack(data="missing.npz"), 2, "no such file"),
    (attack(data="dir.npz"), 2, "a directory"),
    (attack(data="empty.npz"), 2, "empty"),
    (attack(data="garbage.npz"), 2, "not a valid .npz"),
    (attack(data="pickle.npz"), 2, "not a valid .npz"),
    (attack(data="npy-renamed.npz"), 2, "not a valid .npz"),
    (attack(data="bad-magic.npz"), 2, "not a valid .npz"),
    (attack(data="data.csv"), 2, "unknown dataset"),
    (attack(data="huge-header.npz"), 2, "declares shape (1000000000000, 1, 28, 28)"),
    (attack(data="huge-y.npz"), 2, "declares shape (10000000000000,)"),
    (attack(data="truncated.npz"), 2, "truncated or forged"),
    (attack(data="negative-shape.npz"), 2, "negative shape"),
    (attack(data="object.npz"), 2, "unpickling"),
    (attack(data="object-header.npz"), 2, "unpickling"),
    (attack(data="not-npy-member.npz"), 2, "not a .npy array"),
    (attack(data="no-y.npz"), 2, "expected arrays 'x' and 'y'"),
    (attack(data="strings.npz"), 2, "must hold numbers"),
    (attack(data="garbage.pt"), 2, "weights_only"),
    (attack(data="ragged.pt"), 2, "not an array of numbers"),
    (attack(data="wrong-structure.pt"), 2, "expected a dict"),
    (attack(data="sparse-x.pt"), 2, "x is a sparse_coo tensor"),
    (attack(data="sparse-y.pt"), 2, "y is a sparse_coo tensor"),
    # --- attack: wrong shapes and dtypes ---------------------------------------------------------
    (attack(data="labels10.npz", extra="--n 4"), 2, "label 10 is out of range for model zoo:mnist-cnn, which has 10 classes"),
    (attack(data="labels99.npz"), 2, "label 99"),
    (attack(data="labels2p62.npz"), 2, "4,611,686,018,427,387,904"),
    (attack(data="labels-neg.npz"), 2, ">= 0"),
    (attack(data="labels-uint64.npz"), 2, "18,446,744,073,709,551,615"),
    (attack(data="labels-frac.npz"), 2, "integer class indices"),
    (attack(data="labels-nan.npz"), 2, "integer class indices"),
    (attack(data="labels-bool.npz"), 2, "integer class indices"),
    (attack(data="labels-2d.npz"), 2, "1-D"),
    (attack(data="labels-short.npz"), 2, "y has 2"),
    (attack(data="size8.npz"), 2, "takes (1, 28, 28)"),
    (attack(data="rgb.npz"), 2, "1 channel(s), not 3"),
    (attack(data="flat.npz"), 2, "samples have shape (784,)"),
    (attack(data="x1d.npz"), 2, "must have shape"),
    (attack(data="x5d.npz"), 2, "must have shape"),
    (attack(data="complex.npz"), 2, "must hold numbers"),
    (attack(data="int64-1000.npz"), 2, "int64"),
    (attack(data="uint16.npz"), 2, "uint16"),
    (attack(data="bool-x.npz"), 2, "bool"),
    (attack(data="nan-x.npz"), 2, "NaN"),
    (attack(data="range-x.npz"), 2, "outside the declared bounds"),
    (attack(data="float64-huge.npz"), 2, "outside the declared bounds"),
    (attack(data="empty-x.npz"), 2, "empty"),
    # --- attack: models that are not what they claim ----------------------------------------------
    (attack(model="{d}/missing-model"), 2, "no such file"),
    (attack(model="{d}/no-bundle"), 2, "not a model bundle"),
    (attack(model="{d}/pickle.pt2"), 2, "a pickle"),
    (attack(model="{d}/empty.pt2"), 2, "not a torch.export program"),
    (attack(model="{d}/garbage.pt2"), 2, "not a torch.export program"),
    (attack(model="{d}/zip.pt2"), 2, "not a valid torch.export program"),
    (attack(model="{d}/bundle-rgb"), 2, "does not take its declared input_shape [3, 28, 28]"),
    (attack(model="{d}/bundle-classes"), 2, "weights do not fit"),
    (attack(model="{d}/bundle-classes-0"), 2, "num_classes must be an integer from 2"),
    (attack(model="{d}/bundle-shape-huge"), 2, "more than"),
    (attack(model="{d}/bundle-shape-neg"), 2, "positive integers"),
    (attack(model="{d}/bundle-garbage"), 2, "not UTF-8"),
    (attack(model="{d}/bundle-latin1"), 2, "not UTF-8"),
    (attack(model="{d}/good.npz"), 2, "unknown model"),
    (attack(model="tests.fixtures_pkg.tiny:tiny_mlp"), 2, "needs --weights"),
    (attack(model="mnist-cnn --weights {d}/tiny.safetensors"), 2, "only a package.module:factory reference"),
    (attack(model="{d}/tiny.pt2 --weights {d}/tiny.safetensors"), 2, "carries its own"),
    (attack(model="tests.fixtures_pkg.tiny:tiny_mlp --weights {d}/garbage.safetensors"), 2, "not a valid safetensors"),
    (attack(model="tests.fixtures_pkg.tiny:tiny_mlp --weights {d}/dir.npz"), 2, "is a directory"),
    (attack(model="tests.fixtures_pkg.tiny:tiny_mlp --weights {d}/tiny.safetensors"), 2,
     "do not fit model tests.fixtures_pkg.tiny:tiny_mlp: RuntimeError"),
    (attack(data="good4x4.npz", model="tests.fixtures_pkg.tiny:tiny_mlp --weights {d}/k.key"), 2, "weights must be"),
    (attack(data="labels10.npz", model="{d}/tiny.pt2", extra="--n 4"), 2, "do not fit model"),
    # --- attack: numbers ---------------------------------------------------------------------------
    (attack("-e 1e308"), 2, "larger than 1"),
    (attack("-e 5"), 2, "larger than 1"),
    (attack("-e 1e308 --norm l2"), 2, "diagonal"),
    (attack("-e 28.1 --norm l2"), 2, "diagonal"),
    (attack("-e inf"), 2, "finite"),
    (attack("-e nan"), 2, "finite"),
    (attack("-e -1"), 2, ">= 0"),
    (attack("-e abc"), 2, "not a number"),
    (attack("-e ,"), 2, "not a number"),
    (attack("--n 0"), 2, "--n"),
    (attack("--n -3"), 2, "--n"),
    (attack("--n 5"), 2, "holds 4 samples, fewer than the 5 asked for"),
    (attack("--n 100000000000000000000"), 2, "100,000,000,000,000,000,000 asked for"),
    (attack("--batch-size 0"), 2, "batch_size"),
    (attack("--batch-size 10000000000000"), 2, "batch_size"),
    (attack("-a pgd -p steps=1e18"), 2, "steps must be an integer from 1 to 10,000"),
    (attack("-a pgd -p steps=1000000000000000000"), 2, "steps must be"),
    (attack("-a pgd -p steps=true"), 2, "steps must be"),
    (attack("-a pgd -p steps=1.5"), 2, "steps must be"),
    (attack("-a pgd -p steps=-1"), 2, "steps must be"),
    (attack(f"-a pgd -p steps={HUGE}"), 2, "steps must be"),
    (attack(f"-a pgd -p step_size={HUGE}"), 2, "too large for a float"),
    (attack("-a pgd -p step_size=nan"), 2, "step_size"),
    (attack("-a pgd -p " + "1" * 5000), 2, "KEY=VALUE"),
    (attack("-a pgd -p steps=" + "1" * 5000), 2, "too long"),
    (attack("-a pgd -p steps=" + "[" * 3000), 2, "too deeply nested"),
    (attack("-a pgd -p stepz=3"), 2, "has no parameter 'stepz'"),
    (attack("-a pgd -p seed=3"), 2, "--seed"),
    (attack("-a nope"), 2, "nope"),
    (attack("--seed 100000000000000000000000"), 2, "--seed"),
    (attack("--seed abc"), 2, "--seed"),
    (attack("--device bogus"), 2, "--device"),
    # --- attack: output paths ------------------------------------------------------------------------
    (attack("--out {o}/no-such-folder/adv.npz"), 2, "no such directory"),
    (attack("--out {o}/existing-dir"), 2, "is a directory"),
    (attack("--out {o}/existing-file/adv.npz"), 2, "not a folder"),
    (attack("--out {o}/fifo"), 2, ".npz"),
    (attack("--out {o}/adv.txt"), 2, ".npz"),
    (attack("--out ''"), 2, ".npz"),
    # --- bench ---------------------------------------------------------------------------------------
    (bench(suite="{d}/missing.toml"), 2, "no such file"),
    (bench(suite="{d}/dir.toml"), 2, "a directory"),
    (bench(suite="{d}/empty.toml"), 2, "missing key 'eps'"),
    (bench(suite="{d}/garbage.toml"), 2, "not UTF-8"),
    (bench(suite="{d}/latin1.toml"), 2, "not UTF-8"),
    (bench(suite="{d}/malformed.toml"), 2, "malformed TOML"),
    (bench(suite="{d}/deep.toml"), 2, "nested too deeply"),
    (bench(suite="{d}/bigint.toml"), 2, "malformed TOML"),
    (bench(suite="no-such-suite"), 2, "no attacks file named"),
    (bench(suite="{d}/suite-eps-1e308.toml"), 2, "suite-eps-1e308.toml:1 (key 'eps'): linf eps 1e+308 is larger than 1"),
    (bench(suite="{d}/suite-eps-5.toml"), 2, "larger than 1"),
    (bench(suite="{d}/suite-l2-eps-huge.toml"), 2, "diagonal"),
    (bench(suite="{d}/suite-eps-inf.toml"), 2, "finite"),
    (bench(suite="{d}/suite-eps-nan.toml"), 2, "finite"),
    (bench(suite="{d}/suite-eps-neg.toml"), 2, ">= 0"),
    (bench(suite="{d}/suite-eps-str.toml"), 2, "finite number"),
    (bench(suite="{d}/suite-eps-int-huge.toml"), 2, "larger than 1"),
    (bench(suite="{d}/suite-eps-empty.toml"), 2, "empty"),
    (bench(suite="{d}/suite-no-eps.toml"), 2, "missing key 'eps'"),
    (bench(suite="{d}/suite-steps-true.toml"), 2, "steps must be"),
    (bench(suite="{d}/suite-steps-huge.toml"), 2, "steps must be an integer from 1 to 10,000"),
    (bench(suite="{d}/suite-steps-frac.toml"), 2, "steps must be"),
    (bench(suite="{d}/suite-steps-neg.toml"), 2, "steps must be"),
    (bench(suite="{d}/suite-unknown-attack.toml"), 2, "unknown attack 'nope'"),
    (bench(suite="{d}/suite-unknown-param.toml"), 2, "stepz"),
    (bench(suite="{d}/suite-no-attack.toml"), 2, "no attacks"),
    (bench("--eps 1e308"), 2, "--eps"),
    (bench("--eps 5"), 2, "--eps"),
    (bench("--eps nan"), 2, "finite"),
    (bench("--eps x"), 2, "not a number"),
    (bench("--n 0"), 2, "--n"),
    (bench("--n 100000000000000000000"), 2, "fewer than the 100,000,000,000,000,000,000 asked for"),
    (bench("--batch-size 0"), 2, "--batch-size"),
    (bench("--batch-size 100000000000"), 2, "batch_size"),
    (bench(data="huge-header.npz"), 2, "declares shape"),
    (bench(data="labels10.npz", extra="--n 4"), 2, "label 10"),
    (bench(data="rgb.npz"), 2, "channel"),
    (bench("--out {o}/existing-file"), 2, "is a file"),  # click's own check of --out
    (bench("--out {o}/existing-file/sub"), 2, "not a folder"),
    (bench("--out {o}/run-with-dirs"), 2, "checkpoint.json: is a directory"),
    (bench("--device cuda:99"), 2, "--device"),
    # --- train ---------------------------------------------------------------------------------------
    (train(recipe="{d}/missing.toml"), 2, "no such file"),
    (train(recipe="{d}/dir.toml"), 2, "a directory"),
    (train(recipe="{d}/garbage.toml"), 2, "not UTF-8"),
    (train(recipe="{d}/latin1.toml"), 2, "not UTF-8"),
    (train(recipe="{d}/malformed.toml"), 2, "malformed TOML"),
    (train(recipe="{d}/deep.toml"), 2, "nested too deeply"),
    (train(recipe="{d}/empty.toml"), 2, "recipe.method"),
    (train(recipe="{d}/recipe-no-method.toml"), 2, "recipe.method"),
    (train(recipe="{d}/recipe-epochs-0.toml"), 2, "optimizer.epochs"),
    (train(recipe="{d}/recipe-epochs-huge.toml"), 2, ">= 1 and at most 10,000"),
    (train(recipe="{d}/recipe-epochs-true.toml"), 2, "an integer"),
    (train(recipe="{d}/recipe-lr-inf.toml"), 2, "finite"),
    (train(recipe="{d}/recipe-lr-nan.toml"), 2, "finite"),
    (train(recipe="{d}/recipe-lr-1e308.toml"), 2, "optimizer.lr"),
    (train(recipe="{d}/recipe-eps-1e308.toml"), 2, "threat.eps"),
    (train(recipe="{d}/recipe-eps-inf.toml"), 2, "finite"),
    (train(recipe="{d}/recipe-batch-huge.toml"), 2, "batch_size"),
    (train(recipe="{d}/recipe-holdout-huge.toml"), 2, "holdout"),
    (train(recipe="{d}/recipe-steps-huge.toml"), 2, "attack.steps"),
    (train(recipe="{d}/recipe-seed-huge.toml"), 2, "seed"),
    (train(recipe="{d}/recipe-method-bogus.toml"), 2, "recipe.method"),
    (train(recipe="{d}/recipe-unknown-key.toml"), 2, "colour"),
    (train(recipe="sanitize-bitdepth"), 2, "recipe"),
    (train("--epochs 0"), 2, "--epochs"),
    (train("--epochs 100000000000000"), 2, "--epochs must be >= 1 and at most 10,000"),
    (train("--epochs x"), 2, "--epochs"),
    (train("--seed 100000000000000000000000"), 2, "--seed"),
    (train(data="huge-header.npz"), 2, "declares shape"),
    (train(data="size8.npz"), 2, "do not fit model mnist-cnn"),
    (train(data="rgb.npz"), 2, "do not fit model mnist-cnn"),
    (train(data="labels2p62.npz"), 2, "at most 100,000 classes"),
    (train(data="missing.npz"), 2, "no such file"),
    (train("--model {d}/pickle.pt2"), 2, "a pickle"),
    (train("--model {d}/missing-model"), 2, "no such file"),
    (train("--out {o}/existing-file"), 2, "is a file"),
    (train("--out {o}/existing-file/sub"), 2, "not a folder"),
    # --- sanitize ------------------------------------------------------------------------------------
    (sanitize(recipe="{d}/sanitize-empty.toml"), 2, "the recipe does nothing"),
    (sanitize(recipe="{d}/sanitize-no-transforms.toml"), 2, "the recipe does nothing"),
    (sanitize(recipe="{d}/sanitize-bits-0.toml"), 2, "bits must be"),
    (sanitize(recipe="{d}/sanitize-bits-huge.toml"), 2, "bits must be"),
    (sanitize(recipe="{d}/sanitize-sigma-inf.toml"), 2, "sigma must be"),
    (sanitize(recipe="{d}/sanitize-unknown.toml"), 2, "unknown transform"),
    (sanitize(recipe="{d}/garbage.toml"), 2, "not UTF-8"),
    (sanitize(recipe="{d}/latin1.toml"), 2, "not UTF-8"),
    (sanitize(recipe="{d}/dir.toml"), 2, "a directory"),
    (sanitize(recipe="{d}/missing.toml"), 2, "no such file"),
    (sanitize(recipe="{d}/deep.toml"), 2, "nested too deeply"),
    (sanitize(recipe="{d}/recipe-tiny.toml"), 2, "training recipe"),
    (sanitize(data="huge-header.npz"), 2, "declares shape"),
    (sanitize(data="object.npz"), 2, "unpickling"),
    (sanitize(data="complex.npz"), 2, "must hold numbers"),
    (sanitize(data="int64-1000.npz"), 2, "floats"),
    (sanitize(data="rgb.npz"), 2, "shape"),
    (sanitize(data="nan-x.npz"), 2, "NaN"),
    (sanitize(data="missing.npz"), 2, "no such file"),
    (sanitize(data="dir.npz"), 2, "a directory"),
    (sanitize(data="empty.npz"), 2, "empty"),
    (sanitize(data="garbage.npz"), 2, "not a valid .npz"),
    (sanitize(out="{o}/no-such-folder/s.npz"), 2, "no such directory"),
    (sanitize(out="{o}/existing-dir"), 2, ".npz"),
    (sanitize(out="{o}/existing-dir/"), 2, ".npz"),
    (sanitize(out="{o}/s.txt"), 2, ".npz"),
    ("sanitize --recipe sanitize-bitdepth --model mnist-cnn --out {o}/existing-file", 2, "not a folder"),
    ("sanitize --recipe sanitize-bitdepth --model {d}/pickle.pt2 --out {o}/b", 2, "a pickle"),
    ("sanitize --recipe sanitize-bitdepth --model mnist-cnn --input {d}/good.npz --out {o}/b", 2, "exactly one"),
    ("sanitize --recipe sanitize-bitdepth --out {o}/b", 2, "exactly one"),
    # --- detect --------------------------------------------------------------------------------------
    (detect(n="--calib-n 2 --n 100000000000000000000"), 2, "asked for"),
    (detect(n="--calib-n 100000000000000000000"), 2, "--calib-n"),
    (detect(n="--calib-n 1"), 2, "--calib-n"),
    (detect(n="--calib-n 2 --n 0"), 2, "--n"),
    (detect("--fpr nan"), 2, "false-positive"),
    (detect("--fpr 2"), 2, "false-positive"),
    (detect("--fpr 0"), 2, "false-positive"),
    (detect("--bits 0"), 2, "bits"),
    (detect("--bits 1000000"), 2, "bits"),
    (detect("--median 0"), 2, "size"),
    (detect("--median 100000"), 2, "size"),
    (detect("--attack pgd --eps 1e308"), 2, "larger than 1"),
    (detect("--attack pgd --eps nan"), 2, "finite"),
    (detect("--attack pgd --eps -1"), 2, ">= 0"),
    (detect("--attack nope --eps 0.1"), 2, "nope"),
    (detect("--attack pgd"), 2, "go together"),
    (detect("--attack pgd --eps 0.1 --adaptive-steps 0"), 2, "steps"),
    (detect("--attack pgd --eps 0.1 --adaptive-steps 1000000000"), 2, "steps"),
    (detect(data="huge-header.npz"), 2, "declares shape"),
    (detect(data="labels10.npz", n="--calib-n 2 --n 2"), 2, "label 10"),
    (detect(data="rgb.npz"), 2, "channel"),
    # --- certify -------------------------------------------------------------------------------------
    (certify(sigma="0"), 2, "--sigma"),
    (certify(sigma="-1"), 2, "--sigma"),
    (certify(sigma="nan"), 2, "--sigma"),
    (certify(sigma="inf"), 2, "--sigma"),
    (certify(sigma="1e308"), 2, "--sigma"),
    (certify(sigma="x"), 2, "--sigma"),
    (certify("--n0 0"), 2, "--n0"),
    (certify("--n0 1000000000"), 2, "--n0"),
    (certify("--samples 1000000000000"), 2, "--samples"),
    (certify("--alpha 0"), 2, "--alpha"),
    (certify("--alpha 1"), 2, "--alpha"),
    (certify("--alpha nan"), 2, "--alpha"),
    (certify("--batch-size 0"), 2, "--batch-size"),
    (certify("--batch-size 100000000000"), 2, "--batch-size"),
    (certify("--n 5"), 2, "fewer than the 5 asked for"),
    (certify("--n 100000000000000000000"), 2, "asked for"),
    (certify(data="huge-header.npz"), 2, "declares shape"),
    (certify(data="labels10.npz", extra="--n 4"), 2, "label 10"),
    (certify(data="size8.npz"), 2, "takes (1, 28, 28)"),
    (certify("--out {o}/existing-file"), 2, "is a file"),
    (certify("--seed 100000000000000000000000"), 2, "--seed"),
    # --- keygen, sign, verify, attest ------------------------------------------------------------------
    ("keygen --out {o}/no-such-folder/k.key", 2, "no such directory"),
    ("keygen --out {o}/existing-dir", 2, "is a directory"),
    ("keygen --out {o}/fifo", 2, "not a regular file"),
    ("keygen --out ''", 2, "empty"),
    ("keygen --out {o}/existing-file", 2, "refusing to overwrite"),
    ("keygen --out {o}/k.key --type rsa-1", 2, "--type"),
    ("sign {d}/signed --key {d}/missing.key --signature {o}/s.sig", 2, "no such key file"),
    ("sign {d}/signed --key {d}/garbage.npz --signature {o}/s.sig", 2, "private key"),
    ("sign {d}/signed --key {d}/empty.npz --signature {o}/s.sig", 2, "private key"),
    ("sign {d}/signed --key {d}/dir.npz --signature {o}/s.sig", 2, "is a directory"),
    ("sign {d}/signed --key {d}/latin1.toml --signature {o}/s.sig", 2, "private key"),
    ("sign {d}/signed --key {d}/k.key.pub --signature {o}/s.sig", 2, "private key"),
    ("sign {d}/missing-model --key {d}/k.key --signature {o}/s.sig", 2, "missing-model"),
    ("sign {d}/model-with-fifo --key {d}/k.key --signature {o}/s.sig", 2, "cannot sign: "),
    ("sign {d}/signed --key {d}/k.key --signature {o}/no-such-folder/s.sig", 2, "no such directory"),
    ("sign {d}/signed --key {d}/k.key --signature {o}/existing-dir", 2, "is a directory"),
    ("sign {d}/signed --key {d}/k.key --signature {o}/fifo", 2, "not a regular file"),
    ("sign {d}/signed --key {d}/k.key --signature {o}/s.sig --workers 0", 2, "--workers"),
    ("sign {d}/signed --key {d}/k.key --signature {o}/s.sig --workers 100000000000", 2, "--workers"),
    ("verify {d}/signed --key {d}/missing.pub", 2, "no such key file"),
    ("verify {d}/signed --key {d}/garbage.npz", 2, "public key"),
    ("verify {d}/signed --key {d}/dir.npz", 2, "is a directory"),
    ("verify {d}/signed --key {d}/empty.npz", 2, "public key"),
    ("verify {d}/signed --key {d}/k.key.pub --signature {d}/garbage.npz", 1, "garbage.npz"),
    ("verify {d}/signed --key {d}/k.key.pub --signature {d}/dir.npz", 2, "is a directory"),
    ("verify {d}/signed --key {d}/k.key.pub --signature {d}/missing.sig", 1, "no such signature file"),
    ("verify {d}/signed --key {d}/k.key.pub --attestation {d}/garbage.npz", 1, "garbage.npz"),
    ("verify {d}/signed --key {d}/k.key.pub --require 'garbage(('", 2, "require"),
    ("verify {d}/signed --key {d}/k.key.pub --require 'n>=1e999'", 2, "1e999"),
    ("verify {d}/signed --policy {d}/garbage.toml", 2, "not UTF-8"),
    ("verify {d}/signed --policy {d}/dir.toml", 2, "a directory"),
    ("verify {d}/signed --policy {d}/malformed.toml", 2, "malformed TOML"),
    ("verify {d}/signed --policy {d}/missing.toml", 2, "no such file"),
    ("verify {d}/missing-model --key {d}/k.key.pub", 2, "missing-model"),
    ("attest {d}/signed --report {d}/missing.json --key {d}/k.key --out {o}/a.json", 2, "missing.json"),
    ("attest {d}/signed --report {d}/garbage.npz --key {d}/k.key --out {o}/a.json", 2, "garbage.npz"),
    ("attest {d}/signed --report {d}/latin1.toml --key {d}/k.key --out {o}/a.json", 2, "latin1.toml"),
    ("attest {d}/signed --report {d}/dir.npz --key {d}/k.key --out {o}/a.json", 2, "is a directory"),
    ("attest {d}/signed --report {d}/empty.npz --key {d}/k.key --out {o}/a.json", 2, "empty.npz"),
    ("attest {d}/signed --report {d}/report-n-huge.json --key {d}/k.key --out {o}/a.json", 2, "n"),
    ("attest {d}/signed --report {d}/report-nan.json --key {d}/k.key --out {o}/a.json", 2, "clean_accuracy"),
    ("attest {d}/signed --report {d}/report-list.json --key {d}/k.key --out {o}/a.json", 2, "report"),
    ("attest {d}/signed --report {d}/report.json --key {d}/garbage.npz --out {o}/a.json", 2, "private key"),
    ("attest {d}/signed --report {d}/report.json --key {d}/k.key --out {o}/no-such-folder/a.json", 2, "no such directory"),
    ("attest {d}/signed --report {d}/report.json --key {d}/k.key --out {o}/existing-dir", 2, "is a directory"),
    ("attest {d}/missing-model --report {d}/report.json --key {d}/k.key --out {o}/a.json", 2, "missing-model"),
    # --- scan ----------------------------------------------------------------------------------------
    ("scan {d}/missing-file", 2, "unscannable: no such file"),
    ("scan {d}/garbage.npz", 2, "unscannable"),
    ("scan {d}/good.npz --max-expanded-gib nan", 2, "--max-expanded-gib"),
    ("scan {d}/good.npz --max-expanded-gib 0", 2, "--max-expanded-gib"),
    ("scan {d}/good.npz --max-expanded-gib -1", 2, "--max-expanded-gib"),
    ("scan {d}/good.npz --max-expanded-gib 1e308", 2, "--max-expanded-gib"),
    ("scan {d}/good.npz --max-expanded-gib x", 2, "--max-expanded-gib"),
    ("scan", 2, "Missing argument"),
    # --- token ---------------------------------------------------------------------------------------
    (f"{TOKEN} --key {{d}}/garbage.npz", 2, "private key"),
    (f"{TOKEN} --key {{d}}/missing.key", 2, "no such key file"),
    (f"{TOKEN} --key {{d}}/dir.npz", 2, "is a directory"),
    (f"{TOKEN} --secret-file {{d}}/missing", 2, "no such secret file"),
    (f"{TOKEN} --secret-file {{d}}/dir.npz", 2, "is a directory"),
    (f"{TOKEN} --secret-file {{d}}/empty.npz", 2, "at least 32 bytes"),
    (f"{TOKEN} --secret-file {{d}}/secret-short", 2, "at least 32 bytes"),
    (f"{TOKEN} --secret-env BASTION_TEST_UNSET_VARIABLE", 2, "not set"),
    (f"{TOKEN} --key {{d}}/k.key --ttl 1e308", 2, "--ttl"),
    (f"{TOKEN} --key {{d}}/k.key --ttl nan", 2, "--ttl"),
    (f"{TOKEN} --key {{d}}/k.key --ttl -5", 2, "--ttl"),
    (f"{TOKEN} --key {{d}}/k.key --ttl 0", 2, "--ttl"),
    (f"{TOKEN} --key {{d}}/k.key --ttl 99999999999d", 2, "--ttl"),
    (f"{TOKEN} --key {{d}}/k.key --alg PS256", 2, "--alg"),
    (f"{TOKEN} --key {{d}}/k.key --secret-file {{d}}/secret-short", 2, "exactly one"),
    (TOKEN, 2, "exactly one"),
    ("token issue --key {d}/k.key --iss a --aud b --sub ''", 2, "sub"),
    ("token verify abc --policy {d}/garbage.toml", 2, "not UTF-8"),
    ("token verify abc --policy {d}/dir.toml", 2, "a directory"),
    ("token verify abc --policy {d}/malformed.toml", 2, "malformed TOML"),
    ("token verify abc --policy {d}/empty.toml", 2, "audience"),
    ("token verify abc --policy {d}/policy-no-audience.toml", 2, "audience"),
    ("token verify abc --policy {d}/missing.toml", 2, "no such file"),
    ("token verify abc --policy {d}/policy.toml --action 'pre dict'", 2, "--action"),
    ("token verify abc --policy {d}/policy.toml --action predict --model '../x'", 2, "--model"),
    ("token verify abc --policy {d}/policy.toml --model m", 2, "--action"),
    ("token jwks {d}/garbage.npz", 2, "public key"),
    ("token jwks {d}/missing.pub", 2, "no such key file"),
    ("token jwks {d}/dir.npz", 2, "is a directory"),
    ("token jwks {d}/k.key.pub --out {o}/no-such-folder/j.json", 2, "no such directory"),
    ("token jwks {d}/k.key.pub --out {o}/existing-dir", 2, "is a directory"),
    ("token jwks {d}/k.key.pub --out {o}/fifo", 2, "not a regular file"),
    # --- serve ---------------------------------------------------------------------------------------
    ("serve --repository {d}/missing-folder --policy {d}/policy.toml --check", 2, "no such folder"),
    ("serve --repository {d}/a-file --policy {d}/policy.toml --check", 2, "is a file"),
    ("serve --repository {d}/repo --policy {d}/garbage.toml --check", 2, "not UTF-8"),
    ("serve --repository {d}/repo --policy {d}/missing.toml --check", 2, "no such file"),
    ("serve --repository {d}/repo --policy {d}/policy.toml --port 99999", 2, "--port"),
    ("serve --repository {d}/repo --policy {d}/policy.toml --port -1", 2, "--port"),
    ("serve --repository {d}/repo --policy {d}/policy.toml --workers 0", 2, "--workers"),
    ("serve --repository {d}/repo --policy {d}/policy.toml --device bogus", 2, "--device"),
    ("serve --repository {d}/repo --policy {d}/policy.toml --audit-log {o}/no-such-folder/a.log", 2,
     "no such directory"),
    ("serve --repository {d}/repo --policy {d}/policy.toml --audit-log {o}/existing-dir", 2, "is a directory"),
    ("serve --repository {d}/repo --policy {d}/policy.toml --host 999.1.1.1 --audit-log {o}/a.log", 2,
     "cannot listen"),
]

#: Cases that need a real process (see the module docstring): (id, command line, exit status, words).
PROCESS_CASES: list[tuple[str, str, int, str]] = [
    ("pickle-pt2-logs-nothing", attack(model="{d}/pickle.pt2"), 2, "a pickle"),
    ("zip-pt2-logs-nothing", attack(model="{d}/zip.pt2"), 2, "not a valid torch.export program"),
    ("huge-header-in-a-process", attack(data="huge-header.npz"), 2, "declares shape"),
    ("pickle-weights-warn-nothing", attack(model="tests.fixtures_pkg.tiny:tiny_mlp --weights {d}/pickle-weights.pt"),
     2, "refused by torch.load(weights_only=True)"),
    ("csr-data-warns-nothing", attack(data="csr-x.pt"), 2, "x is a sparse_csr tensor"),
    ("fifo-data", attack(data="fifo.npz"), 2, "a FIFO"),
    ("fifo-model", attack(model="{d}/fifo.pt2"), 2, "fifo.pt2"),
    ("fifo-weights", attack(model="tests.fixtures_pkg.tiny:tiny_mlp --weights {d}/fifo.safetensors"), 2, "fifo"),
    ("fifo-suite", bench(suite="{d}/fifo.toml"), 2, "a FIFO"),
    ("fifo-recipe", train(recipe="{d}/fifo.toml"), 2, "a FIFO"),
    ("fifo-sanitize-recipe", sanitize(recipe="{d}/fifo.toml"), 2, "a FIFO"),
    ("fifo-sanitize-input", sanitize(data="fifo.npz"), 2, "a FIFO"),
    ("fifo-key", "sign {d}/signed --key {d}/fifo.key --signature {o}/s.sig", 2, "fifo.key"),
    ("fifo-public-key", "verify {d}/signed --key {d}/fifo.key", 2, "fifo.key"),
    ("fifo-report", "attest {d}/signed --report {d}/fifo.json --key {d}/k.key --out {o}/a.json", 2, "fifo.json"),
    ("fifo-policy", "token verify abc --policy {d}/fifo.toml", 2, "fifo.toml"),
    ("fifo-secret", f"{TOKEN} --secret-file {{d}}/fifo.key", 2, "a FIFO"),
    ("fifo-jwks", "token jwks {d}/fifo.key", 2, "fifo.key"),
    ("fifo-scan", "scan {d}/fifo.key", 2, "FIFO"),
    ("unreadable-data", attack(data="unreadable.npz"), 2, "Permission denied"),
    ("unreadable-suite", bench(suite="{d}/unreadable.toml"), 2, "Permission denied"),
    ("unreadable-recipe", train(recipe="{d}/unreadable.toml"), 2, "Permission denied"),
    ("unreadable-sanitize-recipe", sanitize(recipe="{d}/unreadable.toml"), 2, "Permission denied"),
    ("unreadable-key", "sign {d}/signed --key {d}/unreadable.key --signature {o}/s.sig", 2, "unreadable.key"),
    ("unreadable-secret", f"{TOKEN} --secret-file {{d}}/unreadable.key", 2, "not readable"),
    ("unreadable-policy", "token verify abc --policy {d}/unreadable.toml", 2, "Permission denied"),
    ("readonly-attack-out", attack("--out {o}/readonly/adv.npz"), 2, "cannot write"),
    ("readonly-sanitize-out", sanitize(out="{o}/readonly/s.npz"), 2, "cannot write"),
    ("readonly-bench-out", bench("--out {o}/readonly/run"), 2, "cannot write"),
    ("readonly-train-out", train("--out {o}/readonly/model"), 2, "cannot write"),
    ("readonly-certify-out", certify("--out {o}/readonly/cert"), 2, "cannot write"),
    ("readonly-keygen", "keygen --out {o}/readonly/k.key", 2, "cannot write"),
    ("readonly-signature", "sign {d}/signed --key {d}/k.key --signature {o}/readonly/s.sig", 2, "cannot write"),
    ("readonly-attest", "attest {d}/signed --report {d}/report.json --key {d}/k.key --out {o}/readonly/a.json", 2,
     "cannot write"),
    ("readonly-jwks", "token jwks {d}/k.key.pub --out {o}/readonly/j.json", 2, "cannot write"),
    ("readonly-audit-log", "serve --repository {d}/repo --policy {d}/policy.toml --audit-log {o}/readonly/a.log",
     2, "cannot write"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = build(tmp_path_factory.mktemp("hostile"))
    for name in ("fifo.npz", "fifo.pt2", "fifo.safetensors", "fifo.toml", "fifo.key", "fifo.json"):
        os.mkfifo(d / name)
    (d / "model-with-fifo").mkdir()
    (d / "model-with-fifo" / "weights.bin").write_bytes(b"w")
    os.mkfifo(d / "model-with-fifo" / "pipe")
    before = listing(d)
    yield d
    assert listing(d) == before, "a command changed the hostile inputs"


def argv_of(template: str, d: Path, o: Path) -> list[str]:
    return shlex.split(template.replace("{d}", str(d)).replace("{o}", str(o)))


def check_one_line_refusal(code, stdout: str, stderr: str, expected_code: int, words: str, where: str) -> None:
    assert code == expected_code, f"{where}: exit {code}, expected {expected_code}\n{stdout}{stderr}"
    if expected_code == 0:
        return
    assert "Traceback" not in stderr + stdout, f"{where}: a traceback\n{stderr}"
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and stderr.endswith("\n"), \
        f"{where}: stderr must be exactly one line starting 'error:', got {stderr!r}"
    assert "internal error" not in stderr, f"{where}: {stderr}"
    assert words in stderr, f"{where}: {words!r} not in {stderr!r}"


@pytest.mark.parametrize("template, expected_code, words", CASES, ids=[c[0][:80] for c in CASES])
def test_a_hostile_command_line_is_one_line_and_leaves_nothing(world, tmp_path, template, expected_code, words):
    o = make_output_dir(tmp_path / "o")
    before = listing(o)
    result = CliRunner().invoke(main, argv_of(template, world, o), env={"BASTION_DEBUG": None})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    check_one_line_refusal(result.exit_code, result.stdout, result.stderr, expected_code, words, template)
    if expected_code != 0:
        assert listing(o) == before, f"{template}: left {sorted(set(listing(o)) - set(before))}"


def _without_root_overrides() -> None:
    """In the child: drop root's CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so file modes apply to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(scope="module")
def process_results(world, tmp_path_factory):
    """Every PROCESS_CASES command run in one real process (with root's overrides dropped)."""
    (world / "unreadable.npz").write_bytes((world / "good.npz").read_bytes())
    for name in ("unreadable.toml", "unreadable.key"):
        (world / name).write_text("x = 1\n")
    for name in ("unreadable.npz", "unreadable.toml", "unreadable.key"):
        (world / name).chmod(0)
    root = tmp_path_factory.mktemp("process")
    cases, folders = [], {}
    for case_id, template, _, _ in PROCESS_CASES:
        o = make_output_dir(root / case_id)
        (o / "readonly").mkdir()
        (o / "readonly").chmod(0o555)
        folders[case_id] = (o, listing(o))
        cases.append({"id": case_id, "argv": argv_of(template, world, o)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), str(TESTS)]),
           "OMP_NUM_THREADS": "1"}
    env.pop("BASTION_DEBUG", None)
    try:
        done = subprocess.run([sys.executable, str(TESTS / "cli_driver.py")], input=json.dumps(cases),
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
                              preexec_fn=_without_root_overrides if os.geteuid() == 0 else None)
    finally:
        for name in ("unreadable.npz", "unreadable.toml", "unreadable.key"):
            (world / name).unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), folders


@pytest.mark.parametrize("case_id, template, expected_code, words", PROCESS_CASES, ids=[c[0] for c in PROCESS_CASES])
def test_in_a_real_process_nothing_but_the_one_line_reaches_stderr(process_results, case_id, template,
                                                                   expected_code, words):
    results, folders = process_results
    result = results[case_id]
    assert result["code"] != "hung", f"{template}: blocked (a FIFO read?)"
    check_one_line_refusal(result["code"], result["stdout"], result["stderr"], expected_code, words, template)
    o, before = folders[case_id]
    assert listing(o) == before, f"{template}: left {sorted(set(listing(o)) - set(before))}"


# --- the rules that are not refusals ----------------------------------------------------------------

def test_resume_without_a_checkpoint_warns_and_starts_a_new_run_in_bench_and_train(world, tmp_path):
    """One rule for both (see README): a warning on stderr even under --quiet and --json, then a new run."""
    runs = {
        "bench": ["bench", "--model", "mnist-cnn", "--suite", str(world / "suite-fast.toml"), "--n", "2",
                  "--data", str(world / "good.npz"), "--resume"],
        "train": ["train", "--recipe", str(world / "recipe-tiny.toml"), "--data", str(world / "good.npz"),
                  "--resume"],
    }
    for name, argv in runs.items():
        for extra in (["--quiet"], ["--json"]):
            out = tmp_path / f"{name}{extra[0]}"
            result = CliRunner().invoke(main, argv + extra + ["--out", str(out)])
            assert result.exit_code == 0, (name, result.output)
            first = result.stderr.splitlines()[0]
            assert first.startswith("warning: --resume: no checkpoint at ") and first.endswith("starting a new run")
            if extra == ["--json"]:
                json.loads(result.stdout)
            elif name == "bench":
                assert result.stderr.count("\n") == 1  # --quiet: the warning and nothing else
            assert (out / ("report.json" if name == "bench" else "bastion.toml")).is_file()


def test_without_n_a_command_takes_its_default_or_all_samples(world):
    result = CliRunner().invoke(main, ["attack", "-a", "fgsm", "-e", "0.1", "--data", str(world / "good.npz"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 4


def test_a_model_without_a_declared_shape_runs_on_data_that_fits(world):
    for model in ([*shlex.split(FACTORY.format(d=world))], ["--model", str(world / "tiny.pt2")]):
        result = CliRunner().invoke(main, ["attack", "-a", "fgsm", "-e", "0.1", *model, "--data",
                                           str(world / "good4x4.npz"), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["n"] == 4


def test_float16_images_and_an_eps_of_exactly_the_span_run(world, tmp_path):
    result = CliRunner().invoke(main, ["attack", "-a", "fgsm", "-e", "1", "--data", str(world / "float16.npz"),
                                       "--out", str(tmp_path / "adv.npz")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "adv.npz").is_file()


def test_detect_with_an_attack_but_no_correctly_classified_sample_says_so(world, tmp_path):
    import numpy as np
    import torch

    from bastion.models import load_model

    x = np.zeros((4, 1, 28, 28), np.float32)
    with torch.no_grad():
        predicted = int(load_model("mnist-cnn").module(torch.from_numpy(x[:1])).argmax())
    np.savez(tmp_path / "wrong.npz", x=x, y=np.full(4, (predicted + 1) % 10))
    result = CliRunner().invoke(main, ["detect", "--model", "mnist-cnn", "--data", str(tmp_path / "wrong.npz"),
                                       "--calib-n", "2", "--n", "2", "--attack", "pgd", "--eps", "0.1"])
    assert result.exit_code == 0, result.output
    assert "not run, the model classifies none of the 2 held-out samples correctly" in result.stdout
