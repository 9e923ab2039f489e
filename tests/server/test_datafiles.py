"""The one loader of shipped data files: the version is checked, and a bad file is one error naming it."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from server.datafiles import DataFile, Invalid
from server.errors import ConfigError, ModelError


def _rows(document: dict[str, Any]) -> list[dict[str, str]]:
    if not document["rows"]:
        raise Invalid("no rows")
    return document["rows"]


def _greeting(document: dict[str, Any]) -> str:
    return str(document["greeting"])


TOML = DataFile("server/data/x.toml", 2, "x_invalid", _greeting)
CSV = DataFile("server/data/x.csv", 1, "x_invalid", _rows)


def test_a_toml_file_of_the_version_read_is_parsed() -> None:
    assert TOML.parse_text('version = 2\ngreeting = "hi"\n', "x.toml") == "hi"


@pytest.mark.parametrize(
    ("text", "found"),
    [('version = 1\ngreeting = "hi"\n', "1"), ('greeting = "hi"\n', "None"), ('version = "2"\n', "'2'")],
)
def test_a_toml_file_of_another_or_no_version_is_refused(text: str, found: str) -> None:
    with pytest.raises(ConfigError, match=rf"^x\.toml: version is {found}; expected 2$") as caught:
        TOML.parse_text(text, "x.toml")
    assert caught.value.code == "x_invalid"


def test_a_csv_file_carries_its_version_on_its_first_line() -> None:
    text = "# version: 1\nlabel,text\ncrisis,kms\nsafe,hello\n"
    assert CSV.parse_text(text, "x.csv") == [
        {"label": "crisis", "text": "kms"},
        {"label": "safe", "text": "hello"},
    ]
    with pytest.raises(ConfigError, match=r"x\.csv: version is 2; expected 1"):
        CSV.parse_text(text.replace("1", "2", 1), "x.csv")
    with pytest.raises(ConfigError, match=r"x\.csv: version is None; expected 1"):
        CSV.parse_text("label,text\ncrisis,kms\n", "x.csv")


def test_what_the_parser_finds_wrong_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^x\.csv: no rows$"):
        CSV.parse_text("# version: 1\nlabel,text\n", "x.csv")
    with pytest.raises(ConfigError, match=r"^x\.toml: KeyError: 'greeting'$"):
        TOML.parse_text("version = 2\n", "x.toml")
    with pytest.raises(ConfigError, match=r"^x\.toml: not valid TOML"):
        TOML.parse_text("version = = 2\n", "x.toml")


def test_an_unversioned_file_may_be_read_as_a_version_and_the_error_class_is_the_modules() -> None:
    legacy = DataFile("server/data/x.toml", 1, "bad_x", _greeting, error=ModelError, unversioned=1)
    assert legacy.parse_text('greeting = "hi"\n', "x.toml") == "hi"
    with pytest.raises(ModelError, match="version is 3; expected 1"):
        legacy.parse_text('version = 3\ngreeting = "hi"\n', "x.toml")


def test_a_file_at_a_path_and_a_missing_one(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text('version = 2\ngreeting = "hello"\n', encoding="utf-8")
    assert TOML.load(mine) == "hello"
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        TOML.load(tmp_path / "missing.toml")


def test_every_shipped_data_file_says_its_version() -> None:
    data = resources.files("server").joinpath("data")
    shipped = sorted(p.name for p in data.iterdir() if p.name.endswith((".toml", ".csv")))
    assert "crisis.toml" in shipped and "crisis_examples.csv" in shipped
    for name in shipped:
        text = data.joinpath(name).read_text(encoding="utf-8")
        if name.endswith(".csv"):
            assert re.fullmatch(r"# version: \d+", text.splitlines()[0]), name
        else:
            assert re.search(r"^version = \d+$", text, re.MULTILINE), name
