"""Golden answers: what users and clients see stays the same through refactors.

Pinned under tests/golden/: the JSON answer of POST /api/predict for one fixed image (structure, key
order, types; numbers to 1e-3), the line `cli.py predict` prints for it, the Arrow schemas of
`cli.py score` and `cli.py predict --out x.parquet` and their first rows, and the OpenAPI document.
The head is the linear head EmoReact 0.3.0 saved (tests/fixtures/heads-0.3.0), the store the session's.

A deliberate change of an answer: rerun with EMOREACT_UPDATE_GOLDEN=1 and review the diff of tests/golden/.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthetic import draw

GOLDEN = Path(__file__).with_name("golden")
HEAD = Path(__file__).with_name("fixtures") / "heads-0.3.0" / "linear"
UPDATE = os.environ.get("EMOREACT_UPDATE_GOLDEN") == "1"
TOLERANCE = 1e-3  # scores are rounded to 4 digits; another BLAS may move the last one


def _image() -> bytes:
    buffer = io.BytesIO()
    draw(("sad",), 999_001).save(buffer, "PNG")
    return buffer.getvalue()


def _check(name: str, got) -> None:
    """Compares `got` with the golden file `name` (or writes it, with EMOREACT_UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    got = json.loads(json.dumps(got))  # as a client reads it: tuples (Arrow map entries) become lists
    if UPDATE:
        path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    want = json.loads(path.read_text(encoding="utf-8"))
    _same(got, want, name)


def _schema(schema) -> list:
    """Gives an Arrow schema as [name, type, nullable] rows (types in full, nested ones included)."""
    return [[field.name, str(field.type), field.nullable] for field in schema]


def _same(got, want, where: str) -> None:
    """Asserts equal structure, key order and types; floats within TOLERANCE."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{where}: {got!r} is not a number"
        assert abs(got - want) <= TOLERANCE, f"{where}: {got} != {want}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


@pytest.fixture(scope="module")
def app(store_path):
    from emoreact.web import WebConfig, create_app

    return create_app(WebConfig(store=store_path, head=HEAD, device="cpu"))


def test_the_predict_answer_is_unchanged(app):
    response = app.test_client().post("/api/predict", data={"image": [(io.BytesIO(_image()), "sad.png")]})
    assert response.status_code == 200, response.get_data(as_text=True)
    _check("api_predict.json", response.get_json())


def test_the_openapi_document_is_unchanged(app):
    doc = app.test_client().get("/api/openapi.json").get_json()
    doc["info"].pop("version", None)  # the package version: a release changes it
    _check("openapi.json", doc)


def test_the_predict_line_and_its_parquet_file_are_unchanged(store_path, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from emoreact.cli import main

    monkeypatch.chdir(tmp_path)
    Path("sad.png").write_bytes(_image())
    args = ["--store", str(store_path), "--head", str(HEAD), "--device", "cpu", "--k", "3"]
    printed = CliRunner().invoke(main, ["predict", "sad.png", *args])
    assert printed.exit_code == 0, printed.output
    _check("cli_predict_line.json", json.loads(printed.output))
    written = CliRunner().invoke(main, ["predict", "sad.png", *args, "--out", "x.parquet", "--no-progress"])
    assert written.exit_code == 0, written.output
    assert json.loads(written.output) == {"images": 1, "errors": 0, "out": "x.parquet"}
    table = pq.read_table("x.parquet")
    _check("predict_parquet.json", {"schema": _schema(table.schema),
                                    "first_row": table.slice(0, 1).to_pylist()[0]})


def test_the_score_file_is_unchanged(store_path, tmp_path):
    import pyarrow.parquet as pq

    from emoreact.cli import main

    out = tmp_path / "scored.parquet"
    result = CliRunner().invoke(main, ["score", "--store", str(store_path), "--head", str(HEAD), "--out", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert list(summary) == ["rows", "out", "format", "seconds", "rows_per_s"] and summary["rows"] == 640
    table = pq.read_table(out)
    first = table.slice(0, 1).to_pylist()[0]
    first["path"] = Path(first["path"]).name  # stored as embedded: under the session's temporary folder
    _check("score_parquet.json", {"schema": _schema(table.schema), "first_row": first})


def _plain(value):
    """Gives a default as JSON can hold it (click's "no default" marker by its name)."""
    return value if isinstance(value, (str, int, float, bool, type(None), list, tuple)) else repr(value)


@pytest.mark.parametrize("command", ["train", "predict", "score", "serve"])
def test_the_cli_options_are_unchanged(command):
    """Each option of the commands whose settings come from the config classes: names, default, type, help."""
    from emoreact.cli import main

    options = []
    for param in main.commands[command].params:
        info = param.to_info_dict()
        info["default"] = _plain(info["default"])
        info["flag_value"] = _plain(info.get("flag_value"))
        options.append(info | {"show_default": getattr(param, "show_default", None)})
    _check(f"cli_{command}_options.json", options)
    text = CliRunner().invoke(main, [command, "--help"], terminal_width=100).output
    _check(f"cli_{command}_help.json", text.splitlines())
