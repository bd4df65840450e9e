"""Reading texts for ``embopt embed`` and writing their embeddings.

Inputs: plain text (one text a line, blank lines skipped), JSONL (one object a line
with a text field, or a bare JSON string) and CSV/TSV (a named column; every row
kept, so row i of the output is row i of the table). Outputs: ``.npy`` (float32
(n, dim)) or Parquet (``text`` and a fixed-size float32 ``embedding`` column).
Every problem is one line naming the file and line; outputs appear whole or not at all.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from embopt.errors import DataError
from embopt.pipeline.files import atomic_file

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
OUTPUT_SUFFIXES = (".npy", ".parquet")


def input_format(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    return "lines"


def check_output(path: Path) -> None:
    """Fail before any work when the output format is unknown."""
    if Path(path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"{path}: unsupported output format '{Path(path).suffix}' (use .npy or .parquet)")


def _decode(path: Path) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
                        "convert the file to UTF-8") from None


def read_texts(path: Path, column: str = "text") -> list[str]:
    """Texts of ``path`` in file order (format from the suffix, see the module docstring).

    Raises:
        DataError: missing, undecodable, malformed or empty input (file and line named).
    """
    path = Path(path)
    content = _decode(path)
    fmt = input_format(path)
    if fmt == "lines":
        texts = [line for line in content.splitlines() if line.strip()]
    elif fmt == "jsonl":
        texts = _read_jsonl(path, content, column)
    else:
        texts = _read_csv(path, content, column, CSV_SUFFIXES[path.suffix.lower()])
    if not texts:
        raise DataError(f"{path}: no texts found (empty input)")
    return texts


def _read_jsonl(path: Path, content: str, column: str) -> list[str]:
    texts = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if isinstance(obj, dict):
            if column not in obj:
                raise DataError(f"{path}:{lineno}: no field '{column}' (have: {', '.join(obj) or 'none'})")
            obj = obj[column]
        if not isinstance(obj, str):
            raise DataError(f"{path}:{lineno}: field '{column}' is {type(obj).__name__}, expected a string")
        texts.append(obj)
    return texts


def _read_csv(path: Path, content: str, column: str, delimiter: str) -> list[str]:
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise DataError(f"{path}:1: malformed header ({exc})") from None
    if column not in header:
        raise DataError(f"{path}:1: no column '{column}' (have: {', '.join(header) or 'none'})")
    col = header.index(column)
    texts = []
    try:
        for row in reader:
            if not row:
                continue  # a blank line is not a row
            if len(row) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, header has {len(header)}")
            texts.append(row[col])
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return texts


def write_embeddings(path: Path, embeddings: np.ndarray, texts: list[str]) -> None:
    """Write ``.npy`` or Parquet atomically."""
    path = Path(path)
    check_output(path)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if path.suffix.lower() == ".npy":
        with atomic_file(path, "wb") as fh:
            np.save(fh, embeddings)
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow ships with mlflow
        raise DataError(f"{path}: Parquet output needs pyarrow (pip install pyarrow)") from None
    dim = embeddings.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), type=pa.float32()), dim)
    table = pa.table({"text": pa.array(texts, type=pa.string()), "embedding": vectors})
    with atomic_file(path, "wb") as fh:
        pq.write_table(table, fh)
