"""The unlabeled distillation corpus: WikiExtractor, text, JSONL/CSV/Parquet; split, filtered, capped."""

from __future__ import annotations

import csv
import functools
import json
import logging
import random
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from embopt.errors import DataError

log = logging.getLogger(__name__)

# Abbreviations after which a period does not end a sentence.
_ABBREV = set(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e no vol fig inc ltd co corp jan feb mar apr jun jul aug "
    "sep sept oct nov dec u.s u.k approx ca gen col lt sgt rev est".split()
)
_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences with a punctuation rule and an abbreviation guard."""
    pieces = _SPLIT.split(paragraph.strip())
    out: list[str] = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if out:
            prev_word = out[-1].rsplit(None, 1)[-1].rstrip(".").lower()
            # "J. R. R. Tolkien", "Dr. Smith", "U.S. Army": keep joined.
            if prev_word in _ABBREV or (len(prev_word) == 1 and prev_word.isalpha()):
                out[-1] = f"{out[-1]} {piece}"
                continue
        out.append(piece)
    return out


def _clean(sentence: str) -> str:
    # WikiExtractor leaves holes where templates were: "born ()" / "( , )".
    s = re.sub(r"\(\s*[,;]?\s*\)", "", sentence)
    return re.sub(r"\s+", " ", s).strip()


def iter_corpus_files(paths: Iterable[Path]) -> Iterator[Path]:
    for p in paths:
        p = Path(p)
        if p.is_file():
            yield p
        elif p.is_dir():
            files = [f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")
                     and f.name.lower() not in ("readme.md", "license")]
            if not files:
                raise DataError(f"data.corpus_path: no corpus files in {p}")
            yield from files
        else:
            raise DataError(f"data.corpus_path: not found: {p}")


# A possible sentence end inside a line: only such lines go through the (slower) splitter.
_INNER_END = re.compile(r"[.!?][\"')\]]*\s+\S")


def split_paragraph(text: str) -> list[str]:
    """Sentences of a paragraph by pysbd's rules (a one-sentence line stays whole).

    WikiExtractor files keep :func:`split_sentences`, so the default corpus is unchanged.
    """
    text = text.strip()
    if not _INNER_END.search(text):
        return [text] if text else []
    return [s.strip() for window in _windows(text) for s in _segmenter().segment(window) if s.strip()]


# pysbd's time grows with the square of its input (72 kB: a minute here): long paragraphs go to it in
# windows of whole sentences by the rule splitter, so the cost stays linear (~20 ms a kB).
_WINDOW = 600


def _windows(text: str) -> Iterator[str]:
    if len(text) <= _WINDOW:
        yield text
        return
    buf = ""
    for s in split_sentences(text):
        if buf and len(buf) + len(s) >= _WINDOW:
            yield buf
            buf = s
        else:
            buf = f"{buf} {s}" if buf else s
    if buf:
        yield buf


@functools.cache
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def file_format(path: Path, declared: str = "auto") -> str:
    """The format a corpus file is read as: declared, or guessed from suffix and first lines."""
    if declared != "auto":
        return declared
    if (suffix := Path(path).suffix.lower().removeprefix(".")) in ("jsonl", "csv", "parquet"):
        return suffix
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = [fh.readline() for _ in range(50)]
    return "wiki" if any(line.startswith("<doc ") for line in head) else "paragraphs"


def iter_file_sentences(path: Path, fmt: str = "auto", column: str = "text") -> Iterator[str]:
    """Sentences of one corpus file read as ``fmt``.

    ``fmt``: wiki | lines (one sentence a line, not split) | paragraphs (split) | jsonl | csv | parquet (the
    ``column`` of each row, split), or auto (see :func:`file_format`).
    """
    fmt = file_format(path, fmt)
    if fmt in ("jsonl", "csv", "parquet"):
        for text in read_text_column(path, fmt, column):
            yield from map(_clean, split_paragraph(text))
        return
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if fmt != "wiki":
        for line in lines:
            for s in split_paragraph(line) if fmt == "paragraphs" else [line]:
                if s.strip():
                    yield _clean(s)
        return
    expect_title = False
    for line in lines:
        if line.startswith("<doc "):
            expect_title = True
        elif line.startswith("</doc>") or not line.strip():
            continue
        elif expect_title:  # the line after <doc ...> repeats the title
            expect_title = False
        else:
            yield from map(_clean, split_sentences(line))


def read_text_column(path: Path, fmt: str, column: str) -> Iterator[str]:
    """The ``column`` of every row of a JSONL, CSV or Parquet file; empty cells skipped.

    Read with json, csv and pyarrow rather than ``datasets.load_dataset``: its readers parse whole
    blocks, so a malformed row fails without a row number, and they copy the file into an Arrow cache.

    Raises:
        DataError: naming the file and row of a malformed row, a missing column or a non-text cell.
    """
    if fmt == "parquet":
        yield from _parquet_column(path, column)
        return
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if fmt == "jsonl":
                rows = ((n, _json_row(path, n, line)) for n, line in enumerate(fh, 1) if line.strip())
            else:
                # csv's default 128 kB field limit would refuse a long document; none outgrows its file.
                csv.field_size_limit(max(csv.field_size_limit(), Path(path).stat().st_size))
                reader = csv.DictReader(fh, strict=True)
                if column not in (reader.fieldnames or []):
                    has = reader.fieldnames
                    raise DataError(f"{path}:1: no column '{column}' (data.text_column); has {has}")
                rows = ((reader.line_num, row) for row in reader)
            for n, row in rows:
                if column not in row:
                    raise DataError(f"{path}:{n}: no '{column}' field (data.text_column)")
                yield from _cell(path, n, row[column])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:  # e.g. an unterminated quote: never merge lines silently
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def _json_row(path: Path, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
    return row


def _cell(path: Path, n: int, value: object) -> Iterator[str]:
    if value is None or value == "":
        return
    if not isinstance(value, str):
        raise DataError(f"{path}:{n}: text is {type(value).__name__}, not a string")
    yield value


def _parquet_column(path: Path, column: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet
        raise DataError(f"{path}: not a Parquet file ({str(exc).splitlines()[0]})") from None
    if column not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column '{column}' (data.text_column); has {pf.schema_arrow.names}")
    values = (value for batch in pf.iter_batches(columns=[column]) for value in batch.column(0).to_pylist())
    for n, value in enumerate(values, 1):
        yield from _cell(path, n, value)


def build_corpus(paths: list[Path], exclude: set[str], head: list[str], max_sentences: int, min_words: int,
                 max_words: int, seed: int, head_share: float = 1.0, fmt: str = "auto", column: str = "text",
                 ) -> tuple[list[str], dict]:
    """Collect, filter, deduplicate and shuffle the distillation corpus.

    Returns the sentences, and per source how many were read, kept and dropped (and why). A DataError when
    there is no corpus file, or none of their sentences survives the filters.

    Args:
        paths: corpus files or folders, read as ``fmt``/``column`` say (:func:`iter_file_sentences`).
        exclude: sentences that must never appear (STS val/dev/test).
        head: in-domain sentences (STS train), not length-filtered.
        max_sentences: cap on the total; ``head_share``: the share of it ``head`` may take (either source
            fills what the other lacks, so a small cap still gets corpus sentences).
        min_words, max_words: length filter for the corpus files' sentences; ``seed``: shuffle seed.
    """
    excl = {s.strip().lower() for s in exclude}
    seen: set[str] = set()

    def admit(key: str, counts: dict[str, int]) -> bool:
        """False (and counted) for a sentence of the STS eval splits or one seen before."""
        if key in excl:
            counts["excluded_sts_eval"] += 1
        elif key in seen:
            counts["duplicate"] += 1
        else:
            seen.add(key)
            return True
        return False

    sts = {"offered": len(head), "excluded_sts_eval": 0, "duplicate": 0}
    kept_head = [s.strip() for s in head if admit(s.strip().lower(), sts)]
    files = {"files": 0, "raw": 0, "too_short": 0, "too_long": 0, "excluded_sts_eval": 0, "duplicate": 0}
    pool: list[str] = []
    t0 = time.perf_counter()
    for f in iter_corpus_files(paths):
        files["files"] += 1
        if files["files"] % 10 == 1:  # pysbd takes ~20 ms a kB: say where a long read is
            log.info("corpus file %d: %s (%d sentences read, %.0f s)", files["files"], f, files["raw"],
                     time.perf_counter() - t0)
        for s in iter_file_sentences(f, fmt, column):
            files["raw"] += 1
            n = len(s.split())
            if n < min_words:
                files["too_short"] += 1
            elif n > max_words:
                files["too_long"] += 1
            elif admit(s.lower(), files):
                pool.append(s)
    if not pool:
        raise DataError(f"data.corpus_path: no corpus sentence kept from {files['files']} file(s) in "
                        f"{', '.join(map(str, paths))} (read {files['raw']}: too short {files['too_short']}, "
                        f"too long {files['too_long']}, duplicate {files['duplicate']}, in STS val/dev/test "
                        f"{files['excluded_sts_eval']}); STSb train alone is too small to distil on")
    rng = random.Random(seed)
    rng.shuffle(pool)
    n_head = min(len(kept_head), max(round(max_sentences * head_share), max_sentences - len(pool)))
    n_head = n_head if head_share > 0 else 0  # 0: no STSb-train sentence at all
    n_pool = min(len(pool), max_sentences - n_head)
    if n_head < len(kept_head):  # a seeded sample, not the first train pairs' sentences
        kept_head = random.Random(seed + 1).sample(kept_head, n_head)
    sentences = kept_head + pool[:n_pool]
    rng.shuffle(sentences)
    sts.update(over_share=sts["offered"] - sts["excluded_sts_eval"] - sts["duplicate"] - n_head, kept=n_head)
    files.update(over_cap=len(pool) - n_pool, kept=n_pool)
    stats = {"sts_train": sts, "corpus_files": files, "total": len(sentences)}
    log.info("corpus: %d sentences; from STSb train %s; from corpus files %s", len(sentences), sts, files)
    return sentences, stats


def write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(line.replace("\n", " ") + "\n" for line in lines)


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]
