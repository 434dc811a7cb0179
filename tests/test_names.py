"""Model names, versions and the patterns policies grant them with."""

import pytest

from bastion.access.names import model_matches, model_name_problem, model_pattern_problem, version_problem


@pytest.mark.parametrize("name", ["mnist-cnn", "a", "m.v2_x-1", "A" * 128])
def test_valid_names(name):
    assert model_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "-x", ".x", "a/b", "mnist-cnn/../../x", "a..b", "a b", "a\u00a0b", "A" * 129,
                                  "*", "a*", "a?", "é", "a\n", None, 3, ["a"]])
def test_invalid_names(name):
    assert model_name_problem(name) is not None


def test_versions():
    assert version_problem("1") is None and version_problem("2026.12.01") is None
    for bad in ("", "../1", "1/2", "v" * 65, 1):
        assert version_problem(bad) is not None


@pytest.mark.parametrize("pattern", ["*", "mnist-*", "mnist-cnn", "m?ist*"])
def test_valid_patterns(pattern):
    assert model_pattern_problem(pattern) is None


@pytest.mark.parametrize("pattern", ["", "a/*", "[ab]*", "*/..", "..*", "a b*", None])
def test_invalid_patterns(pattern):
    assert model_pattern_problem(pattern) is not None


def test_globs_match_within_a_name_only():
    assert model_matches("mnist-*", "mnist-cnn")
    assert model_matches("*", "anything")
    assert not model_matches("mnist-*", "digits-cnn")
    assert not model_matches("mnist-cnn", "mnist-cnn-robust")
    # A traversal is not a name, so it never reaches matching; fnmatch alone would have matched it.
    assert model_name_problem("mnist-cnn/../../x") is not None
