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
    # An unterminated quote used to merge the following lines into one text.
    ("unterminated.csv", b'id,text\n1,hello\n2,"a dog\n3,a cat\n', "text",
     "unterminated.csv:3: unterminated quote"),
    ("stray.csv", b'id,text\n1,"a dog\n2,a cat\n3,"the end"\n', "text",
     "stray.csv:4: malformed CSV (',' expected after '\"') (row from line 2)"),
    # Only text is embedded: nothing becomes str(x), and binary data is not text.
    ("null.jsonl", b'{"text": "ok"}\n{"text": null}\n', "text", "null.jsonl:2: field 'text' is null"),
    ("bool.jsonl", b'{"text": true}\n', "text", "bool.jsonl:1: field 'text' is bool, expected a string"),
    ("list.jsonl", b'{"text": ["a", "b"]}\n', "text", "list.jsonl:1: field 'text' is list"),
    ("bare.jsonl", b'"ok"\n3\n', "text", "bare.jsonl:2: value is int, expected a string"),
    ("nul.txt", b"fine\nbad\x00text\n", "text", "nul.txt:2: NUL byte in the text"),
    ("nul.csv", b"id,text\n1,fine\n2,bad\x00text\n", "text", "nul.csv:3: NUL byte in the text"),
    ("utf16.txt", "hello\nworld\n".encode("utf-16-le"), "text", "utf16.txt:1: NUL byte"),
    ("binary.txt", bytes(range(256)) * 4, "text", "binary.txt:2: not valid UTF-8 (byte 0x80)"),
    ("latin1.jsonl", '{"text": "caf\u00e9"}\n'.encode("latin-1"), "text", "latin1.jsonl:1: not valid UTF-8"),
    ("nested.jsonl", b'{"text": {"a": "b"}}\n', "text", "nested.jsonl:1: field 'text' is dict"),
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


@pytest.mark.parametrize("fmt", ["txt", "csv"])
def test_huge_texts_are_embedded_truncated(tiny_bundle, tmp_path, fmt):
    """A 4 MB text (over csv's default 128 kB field limit) is one text, cut at max_seq_length tokens."""
    huge = "a dog runs . " * 320_000
    src = tmp_path / f"in.{fmt}"
    content = f"id,text\n1,{huge}\n2,A dog.\n" if fmt == "csv" else f"{huge}\nA dog.\n"
    src.write_text(content, encoding="utf-8")
    out = tmp_path / "o.npy"
    res = run(tiny_bundle, str(src), str(out))
    assert res.exit_code == 0, res.output
    assert np.load(out).shape == (2, 32)


def test_missing_input_and_bad_output_suffix(tiny_bundle, tmp_path):
    res = run(tiny_bundle, str(tmp_path / "nope.txt"), str(tmp_path / "o.npy"))
    assert res.exit_code == 1 and "nope.txt: file not found" in res.output
    src = write_input(tmp_path, "txt")
    res = run(tiny_bundle, str(src), str(tmp_path / "o.csv"))
    assert res.exit_code == 1 and "o.csv: unsupported output format '.csv'" in res.output
    res = CliRunner().invoke(app, ["embed", str(src), str(tmp_path / "o.npy"), "--bundle", str(tmp_path)])
    assert res.exit_code == 1 and "manifest.json: bundle manifest not found" in res.output


def test_quoted_multiline_text_is_kept_and_reported(tiny_bundle, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('id,text\n1,"A dog.\nA cat."\n2,A man.\n', encoding="utf-8")
    out = tmp_path / "o.npy"
    res = run(tiny_bundle, str(src), str(out))
    assert res.exit_code == 0, res.output
    assert "1 row(s) span several lines (quoted line breaks), first at line 2" in res.output
    assert np.load(out).shape == (2, 32)


def _no_embedding(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(Embedder, "embed", lambda self, texts, **kw: calls.append(texts))
    return calls


def test_output_checked_before_any_work(tiny_bundle, tmp_path, monkeypatch):
    """A folder named like the output, or a file where its folder should be: one line, before reading."""
    calls = _no_embedding(monkeypatch)
    (tmp_path / "taken.npy").mkdir()
    (tmp_path / "file.txt").write_text("x")
    missing_input = str(tmp_path / "nope.txt")  # never read: the output is refused first
    res = run(tiny_bundle, missing_input, str(tmp_path / "taken.npy"))
    assert res.exit_code == 1 and "taken.npy: is a folder; name an output file" in res.output, res.output
    res = run(tiny_bundle, missing_input, str(tmp_path / "file.txt" / "o.npy"))
    assert res.exit_code == 1 and "file.txt is not a folder" in res.output, res.output
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "taken.npy"]
    assert list((tmp_path / "taken.npy").iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 KiB tmpfs (mounting needs root; skipped where it is refused)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_full_disk_is_refused_before_the_embedding_work(tiny_bundle, tmp_path, small_disk, monkeypatch):
    calls = _no_embedding(monkeypatch)  # records that no text reached the model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(f"{t} ({i})" for i in range(200) for t in TEXTS[:1]) + "\n", encoding="utf-8")
    out = small_disk / "o.npy"
    res = run(tiny_bundle, str(src), str(out))
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if "error:" in ln]
    # 200 rows x 32 floats + the header margin, on a 16 KiB disk.
    assert len(lines) == 1, res.output
    assert "o.npy: needs about 29.7 kB, only 16.4 kB free on its disk" in lines[0]
    assert calls == [] and list(small_disk.iterdir()) == []


@pytest.mark.parametrize("out_suffix", [".npy", ".parquet"])
def test_disk_full_while_writing_leaves_the_old_output(tiny_bundle, tmp_path, out_suffix):
    """A write that fails midway (RLIMIT_FSIZE: EFBIG, as a quota would): one line, the temporary removed,
    the previous output intact."""
    import os
    import resource
    import subprocess
    import sys
    from pathlib import Path

    src, out = write_input(tmp_path, "txt"), tmp_path / f"o{out_suffix}"
    out.write_bytes(b"previous output")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", "from embopt.cli.main import app; app()", "embed", str(src), str(out),
         "--bundle", str(tiny_bundle), "--variant", "onnx_fp32", "--threads", "1", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of killing it.
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"embopt embed: error: {out}: cannot write (File too large); nothing was written")
    assert "Traceback" not in proc.stderr
    assert out.read_bytes() == b"previous output" and not list(tmp_path.glob(f".o{out_suffix}.tmp-*"))
