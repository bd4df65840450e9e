"""`embopt embed`: each input format, both outputs, bad input (one line, exit 1, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embopt.cli.main import app
from embopt.serving.runtime import Embedder

TEXTS = ["A man is playing a guitar.", "The cat is watching the window, quietly.", "A dog.",
         'The chef said "cut the bread".']


@pytest.fixture(scope="module")
def reference(tiny_bundle) -> np.ndarray:
    return Embedder(tiny_bundle, variant="onnx_fp32", threads=1).embed(TEXTS)


def run(tiny_bundle, *args: str):
    return CliRunner().invoke(app, ["embed", *args, "--bundle", str(tiny_bundle), "--variant", "onnx_fp32",
                                    "--threads", "1", "--no-progress"])


def write_input(tmp_path, fmt: str):
    if fmt == "txt":
        path = tmp_path / "in.txt"
        lines = [TEXTS[0], "", TEXTS[1], "   ", TEXTS[2], TEXTS[3]]  # blank lines are skipped
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path = tmp_path / "in.jsonl"
        rows = [{"id": 1, "body": TEXTS[0]}, {"id": 2, "body": TEXTS[1]}, {"body": TEXTS[2]},
                {"body": TEXTS[3]}]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    else:
        import csv

        path = tmp_path / "in.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "body"])
            for i, t in enumerate(TEXTS):
                w.writerow([i, t])  # commas and quotes inside the text are quoted by the writer
    return path


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv"])
@pytest.mark.parametrize("out_suffix", [".npy", ".parquet"])
def test_each_input_format(tiny_bundle, reference, tmp_path, fmt, out_suffix):
    src = write_input(tmp_path, fmt)
    out = tmp_path / f"emb{out_suffix}"
    extra = [] if fmt == "txt" else ["--column", "body"]
    res = run(tiny_bundle, str(src), str(out), "--batch-size", "3", *extra)
    assert res.exit_code == 0, res.output
    if out_suffix == ".npy":
        got = np.load(out)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table.column("text").to_pylist() == TEXTS
        got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, reference, atol=2e-5)


def test_cache_option_fills_a_store(tiny_bundle, reference, tmp_path):
    src, out, cache = write_input(tmp_path, "txt"), tmp_path / "e.npy", tmp_path / "c.sqlite"
    assert run(tiny_bundle, str(src), str(out), "--cache", str(cache)).exit_code == 0
    assert run(tiny_bundle, str(src), str(out), "--cache", str(cache)).exit_code == 0
    np.testing.assert_allclose(np.load(out), reference, atol=2e-5)
    import sqlite3

    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == len(TEXTS)


@pytest.mark.parametrize("name,content,column,message", [
    ("empty.txt", b"", "text", "empty.txt: no texts found (empty input)"),
    ("blank.txt", b"\n  \n\n", "text", "blank.txt: no texts found (empty input)"),
    ("latin1.txt", "fine\ncaf\u00e9\n".encode("latin-1"), "text",
     "latin1.txt:2: not valid UTF-8 (byte 0xe9)"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "text", "bad.jsonl:2: invalid JSON"),
    ("field.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "text",
     "field.jsonl:2: no field 'text' (have: body)"),
    ("type.jsonl", b'{"text": 3}\n', "text", "type.jsonl:1: field 'text' is int, expected a string"),
    ("col.csv", b"id,body\n1,hello\n", "text", "col.csv:1: no column 'text' (have: id, body)"),
    ("header.csv", b"id,text\n", "text", "header.csv: no texts found (empty input)"),
    ("ragged.csv", b"id,text\n1,hello\n2,a,b\n", "text", "ragged.csv:3: 3 fields, header has 2"),
])
def test_bad_input_is_one_clear_line(tiny_bundle, tmp_path, name, content, column, message):
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / "out.npy"
    res = run(tiny_bundle, str(src), str(out), "--column", column)
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if "error:" in ln]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not out.exists() and not list(tmp_path.glob(".out.npy*"))


def test_missing_input_and_bad_output_suffix(tiny_bundle, tmp_path):
    res = run(tiny_bundle, str(tmp_path / "nope.txt"), str(tmp_path / "o.npy"))
    assert res.exit_code == 1 and "nope.txt: file not found" in res.output
    src = write_input(tmp_path, "txt")
    res = run(tiny_bundle, str(src), str(tmp_path / "o.csv"))
    assert res.exit_code == 1 and "o.csv: unsupported output format '.csv'" in res.output
    res = CliRunner().invoke(app, ["embed", str(src), str(tmp_path / "o.npy"), "--bundle", str(tmp_path)])
    assert res.exit_code == 1 and "manifest.json: bundle manifest not found" in res.output
