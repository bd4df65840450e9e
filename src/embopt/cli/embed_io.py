"""Reading texts for ``embopt embed`` and writing their embeddings.

Inputs: plain text (one text a line, blank lines skipped), JSONL (one object a line with a text
field, or a bare JSON string) and CSV/TSV (a named column; every row kept, so row i of the output is
row i of the table). Outputs: ``.npy`` (float32 (n, dim)) or Parquet (``text`` and a fixed-size
float32 ``embedding`` column), whole or not at all. Every problem is one line naming the file and
line. Only text is embedded: a JSON non-string, or a text holding NUL bytes (binary data, UTF-16
read as UTF-8), is refused. CSV is parsed strictly: a stray or unterminated quote that would swallow
the following lines into one text is an error naming the line where it opened; a legitimately
quoted multi-line text is kept and reported in the log.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from embopt.errors import DataError
from embopt.pipeline.files import atomic_file

log = logging.getLogger("embopt.embed")

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv"}  # anything else: lines


def input_format(path: Path) -> str:
    return FORMATS.get(Path(path).suffix.lower(), "lines")


def check_output(path: Path) -> None:
    """Fail before any work when the output cannot be written: unknown format, a folder in the way,
    a parent that is a file, a folder we cannot create files in."""
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".parquet"):
        raise DataError(f"{path}: unsupported output format '{path.suffix}' (use .npy or .parquet)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; name an output file")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"{path}: {parent} is not a folder") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot create folder {parent} ({exc.strerror or exc})") from None
    try:  # the write itself goes through a temporary sibling: check that one can be made
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.tmp-", dir=parent):
            pass
    except OSError as exc:
        raise DataError(f"{path}: cannot write in {parent} ({exc.strerror or exc})") from None


def check_space(path: Path, dim: int, texts: list[str]) -> None:
    """Fail before the embedding work when the output's disk has too little free space.

    Too little: less than a generous estimate of the output's size (``texts`` embedded in ``dim`` floats).
    """
    nbytes = len(texts) * dim * 4 + 4096
    if Path(path).suffix.lower() == ".parquet":
        nbytes += sum(len(t.encode("utf-8")) for t in texts) + 64 * len(texts)
    free = shutil.disk_usage(Path(path).parent).free
    if free < nbytes:
        raise DataError(f"{path}: needs about {_size(nbytes)}, only {_size(free)} free on its disk")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:,.1f} kB"


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


def _check_text(path: Path, lineno: int, text: str) -> str:
    if "\x00" in text:
        raise DataError(f"{path}:{lineno}: NUL byte in the text (binary data, or UTF-16 read as UTF-8?)")
    return text


def read_texts(path: Path, column: str = "text") -> list[str]:
    """Texts of ``path`` in file order (format from the suffix, see the module docstring).

    Raises:
        DataError: missing, undecodable, malformed or empty input (file and line named).
    """
    path = Path(path)
    content, fmt = _decode(path), input_format(path)
    if fmt == "lines":
        texts = [_check_text(path, i, line) for i, line in enumerate(content.splitlines(), start=1)
                 if line.strip()]
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
        what = "value"
        if isinstance(obj, dict):
            if column not in obj:
                raise DataError(f"{path}:{lineno}: no field '{column}' (have: {', '.join(obj) or 'none'})")
            obj, what = obj[column], f"field '{column}'"
        if not isinstance(obj, str):
            kind = "null" if obj is None else type(obj).__name__
            raise DataError(f"{path}:{lineno}: {what} is {kind}, expected a string")
        texts.append(_check_text(path, lineno, obj))
    return texts


def _read_csv(path: Path, content: str, column: str, delimiter: str) -> list[str]:
    # strict: a quote must close right before a delimiter or the line end, so a stray quote that
    # would swallow the next lines into one field is an error instead of a merged text.
    # csv's default 128 kB field limit would refuse a legitimate long text; no field outgrows its file.
    csv.field_size_limit(max(csv.field_size_limit(), len(content)))
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise DataError(f"{path}:1: malformed header ({exc})") from None
    if column not in header:
        raise DataError(f"{path}:1: no column '{column}' (have: {', '.join(header) or 'none'})")
    col = header.index(column)
    texts, multiline = [], []
    while True:
        start = reader.line_num + 1  # the line this row begins on
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise DataError(f"{path}:{start}: unterminated quote: the quoted field opened on this row "
                                "runs to the end of the file") from None
            spans = f" (row from line {start})" if reader.line_num > start else ""
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc}){spans}; "
                            "look for an unbalanced quote") from None
        if not row:
            continue  # a blank line is not a row
        if len(row) != len(header):
            raise DataError(f"{path}:{start}: {len(row)} fields, header has {len(header)}")
        if reader.line_num > start:
            multiline.append(start)
        texts.append(_check_text(path, start, row[col]))
    if multiline:
        log.warning("%s: %d row(s) span several lines (quoted line breaks), first at line %d; "
                    "if that is not intended, look for an unbalanced quote there", path, len(multiline),
                    multiline[0])
    return texts


def write_embeddings(path: Path, embeddings: np.ndarray, texts: list[str]) -> None:
    """Write ``.npy`` or Parquet atomically."""
    path = Path(path)
    check_output(path)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    try:
        with atomic_file(path, "wb") as fh:
            if path.suffix.lower() == ".npy":
                np.save(fh, embeddings)
                return
            import pyarrow as pa
            import pyarrow.parquet as pq

            flat = pa.array(embeddings.reshape(-1), type=pa.float32())
            vectors = pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])
            pq.write_table(pa.table({"text": pa.array(texts, type=pa.string()), "embedding": vectors}), fh)
    except OSError as exc:  # a full disk, a vanished folder: the temporary file is already removed
        raise DataError(f"{path}: cannot write ({exc.strerror or exc}); nothing was written") from None
