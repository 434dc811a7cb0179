"""Every TOML data file bastion reads fails the same way: one line, the file's name, the caller's error type."""

from __future__ import annotations

import pytest

from bastion.errors import ConfigError, ModelError
from bastion.tomlfile import read_toml


@pytest.mark.parametrize("content,expected", [
    (b"[recipe\nmethod = 1\n", "malformed TOML"),
    (b"name = \"\xff\xfe\"\n", "not UTF-8 text"),
    (None, "cannot read"),  # a directory where a file is expected
])
@pytest.mark.parametrize("error", [ConfigError, ModelError])
def test_bad_toml_files_raise_the_callers_error_in_one_line(tmp_path, content, expected, error):
    path = tmp_path / "x.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(error) as caught:
        read_toml(path, error)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_good_toml_parses(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[recipe]\nmethod = \"clean\"\n", encoding="utf-8")
    assert read_toml(path, ConfigError) == {"recipe": {"method": "clean"}}
