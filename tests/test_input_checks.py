"""The library checks behind the hostile command lines: .npz headers, labels, sample counts, eps
bounds, a dataset against a model, bundle metadata against its weights, .pt2 files that are not
programs, outputs that cannot be written, inputs that are not regular files, empty sanitiser
recipes, training budgets, smoothing settings, and the CLI's --n and --resume rules."""

from __future__ import annotations

import io
import logging
import math
import os
import re
import shutil
import signal
import struct
import zipfile

import numpy as np
import pytest
import torch
from hostile_world import npy_bytes, npy_header_only, write_zip
from torch import nn

import bastion.data as data_module
from bastion.attacks.params import integer, number
from bastion.data import Dataset, MAX_CLASSES, from_arrays, load_data, read_npz
from bastion.defenses.sanitizer import sanitizer_from_dict
from bastion.defenses.smoothing import check_settings
from bastion.defenses.training.recipe import recipe_from_dict
from bastion.errors import ConfigError, DataError, ModelError, OutputError, ThreatModelError, UsageError
from bastion.evaluation.suite import load_suite
from bastion.fsutil import atomic_write_bytes, check_output_dir, check_output_file, read_regular_file
from bastion.models import load_model
from bastion.models.bundle import load_bundle
from bastion.models.fit import check_fit
from bastion.models.formats import load_program
from bastion.models.loaded import LoadedModel
from bastion.models.zoo import zoo_path
from bastion.threat import ThreatModel, max_eps

X = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
Y = np.array([0, 1, 2, 3])


# --- .npz headers: checked before anything is allocated ---------------------------------------

def test_a_header_claiming_terabytes_is_refused_before_reading_any_array(tmp_path, monkeypatch):
    path = tmp_path / "huge.npz"
    write_zip(path, {"x.npy": npy_header_only((10 ** 12, 1, 28, 28)), "y.npy": npy_bytes(Y)})
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("an array was read"))
    with pytest.raises(DataError, match=r"declares shape \(1000000000000, 1, 28, 28\) of float32 "
                                        r"\(3,136,000,000,000,000 bytes\), but its member holds 0 bytes"):
        read_npz(path)


def test_arrays_over_the_cap_are_refused_even_when_honest(tmp_path):
    path = tmp_path / "big.npz"
    np.savez_compressed(path, x=X, y=Y)
    assert read_npz(path)["x"].shape == X.shape  # compressed members are measured uncompressed
    with pytest.raises(DataError, match=r"over the 1,000-byte limit \(bastion.data.MAX_NPZ_BYTES\)"):
        read_npz(path, max_bytes=1000)


def test_zero_size_dtypes_count_their_elements(tmp_path):
    path = tmp_path / "void.npz"
    write_zip(path, {"x.npy": npy_header_only((10 ** 15,), "|V0"), "y.npy": npy_bytes(Y)})
    with pytest.raises(DataError, match="over the"):
        read_npz(path)


@pytest.mark.parametrize("members, message", [
    ({"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y), "x.npy ": b""}, "not a .npy array"),
    ({"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y), "extra/": b""}, "not a .npy array"),
    ({"x.npy": npy_header_only((4, 1, 28, 28), data=b"\0" * 100), "y.npy": npy_bytes(Y)}, "truncated or forged"),
    ({"x.npy": npy_bytes(X) + b"\0" * 8, "y.npy": npy_bytes(Y)}, "truncated or forged"),
    ({"x.npy": npy_header_only((4,), "|O"), "y.npy": npy_bytes(Y)}, "only unpickling can read"),
    ({"x.npy": b"\x93NUMPY\x09\x00" + b"\0" * 60, "y.npy": npy_bytes(Y)}, "format version"),
    ({"x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 'nonsense'", "y.npy": npy_bytes(Y)}, "not a valid .npz"),
])
def test_members_that_are_not_plain_arrays_are_refused(tmp_path, members, message):
    path = tmp_path / "bad.npz"
    write_zip(path, members)
    with pytest.raises(DataError, match=message):
        read_npz(path)


def test_duplicate_members_and_too_many_members_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning):
        archive.writestr("x.npy", npy_bytes(X))
        archive.writestr("x.npy", npy_bytes(X[:1]))
        archive.writestr("y.npy", npy_bytes(Y))
    with pytest.raises(DataError, match="two members are named 'x.npy'"):
        read_npz(path)
    monkeypatch.setattr(data_module, "MAX_NPZ_ARRAYS", 1)
    np.savez(tmp_path / "two.npz", x=X, y=Y)
    with pytest.raises(DataError, match="holds 2 members"):
        read_npz(tmp_path / "two.npz")


def test_an_encrypted_member_is_one_line(tmp_path):
    path = tmp_path / "encrypted.npz"
    np.savez(path, x=X, y=Y)
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the "encrypted" flag bit
        start = 0
        while (start := raw.find(signature, start)) != -1:
            struct.pack_into("<H", raw, start + offset, struct.unpack_from("<H", raw, start + offset)[0] | 1)
            start += 4
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="not a valid .npz file"):
        read_npz(path)


def test_version_2_headers_and_compressed_archives_read(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(buffer, np.lib.format.header_data_from_array_1_0(X))
    buffer.write(X.tobytes())
    write_zip(tmp_path / "v2.npz", {"x.npy": buffer.getvalue(), "y.npy": npy_bytes(Y)})
    assert np.array_equal(read_npz(tmp_path / "v2.npz")["x"], X)


# --- labels and sample counts --------------------------------------------------------------------

@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 2, 2 ** 64 - 1], dtype=np.uint64), "18,446,744,073,709,551,615 is out of range"),
    (np.array([0, 1, 2, MAX_CLASSES]), "at most 100,000 classes"),
    (np.array([0.0, 1.0, 2.0, 1e30]), "out of range"),
    (np.array([0, 1, -1, 3], dtype=np.int8), ">= 0, found -1"),
    (torch.tensor([0, 1, 2, 3], dtype=torch.uint8) > 1, "integer class indices"),
    (torch.tensor([0.0, 0.5, 1.0, 2.0]), "integer class indices"),
])
def test_labels_are_checked_in_their_own_dtype(labels, message):
    with pytest.raises(DataError, match=message):
        from_arrays(X, labels)


def test_integral_float_labels_become_class_indices():
    assert from_arrays(X, np.array([0.0, 1.0, 2.0, 3.0])).y.dtype == torch.int64


def test_check_labels_names_the_label_and_the_class_count():
    data = from_arrays(X, np.array([0, 1, 10, 99]), name="d")
    data.check_labels(100)
    with pytest.raises(DataError, match=r"d: label 99 is out of range for m, which has 10 classes "
                                        r"\(labels 0 to 9\); 2 sample\(s\)"):
        data.check_labels(10, "m")


def test_first_is_exact_and_take_clamps():
    data = from_arrays(X, Y, name="d")
    assert len(data.take(10)) == 4 and len(data.first(4)) == 4
    with pytest.raises(DataError, match="d holds 4 samples, fewer than the 100,000,000,000,000,000,000 asked for"):
        data.first(10 ** 20)
    with pytest.raises(DataError, match="positive"):
        data.first(0)


# --- eps bounds --------------------------------------------------------------------------------

def test_linf_eps_beyond_the_span_is_refused_and_the_span_itself_is_not():
    assert ThreatModel(eps=1.0).single == 1.0
    assert ThreatModel(eps=8.0, bounds=(0.0, 255.0)).single == 8.0
    for eps in (1.0001, 1e308):
        with pytest.raises(ThreatModelError, match="larger than 1, the span of the input bounds"):
            ThreatModel(eps=eps)


def test_l2_eps_beyond_the_diagonal_is_refused_once_the_shape_is_known():
    shape = (1, 28, 28)
    diagonal = max_eps("l2", (0.0, 1.0), shape)
    assert diagonal == pytest.approx(28.0)
    ThreatModel(norm="l2", eps=1.0 * math.prod(shape) ** 0.5).check_sample_shape(shape)  # as the indicator computes it
    with pytest.raises(ThreatModelError, match="diagonal of the input box"):
        ThreatModel(norm="l2", eps=[0.5, 1e308]).check_sample_shape(shape)
    with pytest.raises(ThreatModelError, match="lo < hi"):
        ThreatModel(bounds=(-1e308, 1e308))


def test_a_suite_eps_beyond_the_inputs_names_the_file_line_or_the_option(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n\neps = [0.1, 1e308]\n[[attack]]\nname = "fgsm"\n')
    suite = load_suite(path)  # the input range is not known yet
    with pytest.raises(ConfigError, match=rf"{path}:3 \(key 'eps'\): linf eps 1e\+308 is larger than 1"):
        suite.check_inputs((0.0, 1.0), (1, 28, 28))
    path.write_text('eps = 8\n[[attack]]\nname = "fgsm"\n')
    load_suite(path).check_inputs((0.0, 255.0), (1, 28, 28))  # 8 of 255 is a sane eps
    with pytest.raises(ConfigError, match=r"^--eps: l"):
        load_suite("quick").with_eps([0.1, 2.0]).check_inputs((0.0, 1.0), (1, 28, 28))


def test_attacks_refuse_an_l2_eps_beyond_the_diagonal_of_their_inputs():
    from bastion.attacks import get_attack

    attack = get_attack("fgsm")(ThreatModel(norm="l2", eps=1e30))
    with pytest.raises(ThreatModelError, match="diagonal"):
        attack.run(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))


# --- a dataset against a model -------------------------------------------------------------------

def test_declared_shapes_and_classes_are_compared_without_running_the_model():
    loaded = load_model("mnist-cnn")
    assert check_fit(loaded, from_arrays(X, Y)) == 10
    with pytest.raises(DataError, match=r"samples have shape \(3, 28, 28\), but model zoo:mnist-cnn takes "
                                        r"\(1, 28, 28\) \(1 channel\(s\), not 3\)"):
        check_fit(loaded, from_arrays(np.repeat(X, 3, axis=1), Y))
    with pytest.raises(DataError, match="label 10 is out of range for model zoo:mnist-cnn"):
        check_fit(loaded, from_arrays(X, np.array([0, 1, 2, 10])))


def test_a_model_without_a_declared_shape_is_probed_and_keeps_its_mode():
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    loaded = LoadedModel(module=module, name="tiny")
    small = from_arrays(np.random.default_rng(1).random((4, 1, 4, 4), dtype=np.float32), np.array([0, 1, 2, 0]))
    assert check_fit(loaded, small) == 3 and module.training
    with pytest.raises(DataError, match=r"do not fit model tiny: RuntimeError: mat1 and mat2 shapes"):
        check_fit(loaded, from_arrays(X, Y))
    with pytest.raises(DataError, match="label 3 is out of range for model tiny, which has 3 classes"):
        check_fit(loaded, from_arrays(small.x.numpy(), np.array([0, 1, 2, 3])))


@pytest.mark.parametrize("head, message", [(nn.Flatten(0), "returns (16,)"), (nn.Linear(16, 1), "(1, 1)")])
def test_a_model_that_does_not_return_class_scores_is_a_model_error(head, message):
    loaded = LoadedModel(module=nn.Sequential(nn.Flatten(), head), name="odd")
    with pytest.raises(ModelError, match=re.escape(message)):
        check_fit(loaded, from_arrays(np.random.default_rng(1).random((2, 1, 4, 4), dtype=np.float32),
                                      np.array([0, 1])))


def test_a_bundle_whose_metadata_does_not_match_its_weights_does_not_load(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(zoo_path("mnist-cnn"), bundle)
    meta = bundle / "bastion.toml"
    meta.write_text(meta.read_text().replace("28,\n    28,", "14,\n    14,"))
    with pytest.raises(ModelError, match=r"does not take its declared input_shape \[1, 14, 14\]: RuntimeError"):
        load_bundle(bundle)
    meta.write_text(meta.read_text().replace("14,\n    14,", "28,\n    28,").replace("bounds = [\n    0.0,",
                                                                                     "bounds = [\n    2.0,"))
    with pytest.raises(ModelError, match="bounds must be two finite numbers"):
        load_bundle(bundle)


# --- .pt2 files that are not programs: one line, nothing logged -----------------------------------

@pytest.mark.parametrize("content, message", [
    (b"\x80\x04}\x94.", "a pickle"), (b"", "not a zip archive"), (None, "not a valid torch.export program")])
def test_a_pt2_that_is_not_a_program_logs_nothing(tmp_path, capfd, caplog, content, message):
    path = tmp_path / "m.pt2"
    if content is None:
        write_zip(path, {"version": b"1", "hello.txt": b"not a program"})
    else:
        path.write_bytes(content)
    with caplog.at_level(logging.DEBUG, logger="torch"), pytest.raises(ModelError, match=message):
        load_program(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert capfd.readouterr().err == ""


# --- outputs and inputs ----------------------------------------------------------------------------

def test_output_checks_refuse_what_cannot_be_written(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    for path, message in ((tmp_path / "dir", "is a directory"), (tmp_path / "missing" / "x", "no such directory"),
                          (tmp_path / "file" / "x", "is a regular file, not a folder"),
                          (tmp_path / "fifo", r"not a regular file \(a FIFO\)"), ("", "empty")):
        with pytest.raises(OutputError, match=message):
            check_output_file(path)
    assert check_output_file(tmp_path / "file") == tmp_path / "file"
    assert check_output_file(tmp_path / "fifo", appends=True) == tmp_path / "fifo"
    for path, message in ((tmp_path / "file", "is a regular file, not a folder"),
                          (tmp_path / "file" / "a" / "b", "cannot create the output folder: .*file is a regular")):
        with pytest.raises(OutputError, match=message):
            check_output_dir(path)
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_an_atomic_write_over_a_directory_is_an_output_error_and_leaves_no_temp_file(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_bytes(tmp_path / "dir", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_reading_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo.npz")
    previous = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("reading the FIFO blocked"))
    signal.alarm(10)
    try:
        with pytest.raises(ConfigError, match="cannot read the thing: it is a FIFO"):
            read_regular_file(tmp_path / "fifo", limit=10, error=ConfigError, what="thing")
        with pytest.raises(DataError, match="is a FIFO, not a data file"):
            load_data(tmp_path / "fifo.npz")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(ConfigError, match="over the 10-byte limit"):
        read_regular_file(tmp_path / "big", limit=10, error=ConfigError, what="thing")


# --- recipes, settings, parameters -----------------------------------------------------------------

def test_a_sanitiser_recipe_must_do_something():
    for raw in ({}, {"name": "x"}, {"transforms": []}):
        with pytest.raises(ConfigError, match="the recipe does nothing"):
            sanitizer_from_dict(raw, "r.toml")
    assert not sanitizer_from_dict({"validation": {}}, "r.toml").transforms  # validation alone does something


@pytest.mark.parametrize("section, key, value, message", [
    ("optimizer", "epochs", 10 ** 18, ">= 1 and at most 10,000"), ("optimizer", "batch_size", 10 ** 12, "batch_size"),
    ("optimizer", "lr", float("inf"), "finite"), ("optimizer", "lr", 1e308, "optimizer.lr"),
    ("optimizer", "lr", 10 ** 400, "must be a number"), ("attack", "steps", 10 ** 18, "attack.steps"),
    ("guard", "restarts", 10 ** 6, "guard.restarts"), ("threat", "eps", float("inf"), "finite"),
    ("recipe", "seed", 10 ** 30, "recipe.seed"), ("data", "holdout", 10 ** 30, "data.holdout"),
])
def test_training_budgets_have_maxima(section, key, value, message):
    raw = {"recipe": {"method": "clean"}}
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(raw)
    with pytest.raises(ConfigError, match="--epochs must be >= 1 and at most 10,000"):
        recipe_from_dict({"recipe": {"method": "clean"}}).with_overrides(epochs=10 ** 14)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": math.inf}, "--sigma"), ({"sigma": 11.0}, "at most 10"), ({"sigma": math.nan}, "--sigma"),
    ({"batch_size": 10 ** 11}, "--batch-size"), ({"alpha": math.nan}, "--alpha"), ({"n0": 0}, "--n0"),
])
def test_smoothing_settings_are_bounded(kwargs, message):
    settings = {"sigma": 0.25, "n0": 10, "samples": 10, "alpha": 0.001, "batch_size": 10} | kwargs
    with pytest.raises(UsageError, match=message):
        check_settings(**settings)


def test_the_largest_sigma_scales_with_the_input_range():
    check_settings(sigma=25.0, n0=10, samples=10, alpha=0.001, batch_size=10, bounds=(0.0, 255.0))


def test_a_number_parameter_refuses_an_integer_too_large_for_a_float():
    assert "too large for a float" in number("step", 0.1, 0.0).problem(10 ** 400)
    assert "from 1 to 10" in integer("steps", 1, 1, 10).problem(10 ** 400)


# --- the CLI's rules -------------------------------------------------------------------------------

def test_the_n_and_resume_rules(tmp_path, capsys):
    from bastion.cli.common import choose_samples, resume_requested

    data = Dataset("d", torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), 2)
    assert len(choose_samples(data, None, 1000)) == 4 and len(choose_samples(data, 3, 1000)) == 3
    with pytest.raises(UsageError, match="--n: d holds 4 samples, fewer than the 5 asked for"):
        choose_samples(data, 5, 1000)
    assert resume_requested(False, False, tmp_path / "none") is False and capsys.readouterr().err == ""
    assert resume_requested(True, False, tmp_path / "none") is False
    assert capsys.readouterr().err == f"warning: --resume: no checkpoint at {tmp_path / 'none'}; starting a new run\n"
    (tmp_path / "ckpt").write_text("{}")
    assert resume_requested(True, True, tmp_path / "ckpt") is True
