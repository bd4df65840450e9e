"""The unlabeled distillation corpus: WikiExtractor or plain text, split, filtered, capped."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from embopt.errors import DataError

log = logging.getLogger(__name__)

# Abbreviations after which a period does not end a sentence.
_ABBREV = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sr",
    "jr",
    "st",
    "mt",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "no",
    "vol",
    "fig",
    "inc",
    "ltd",
    "co",
    "corp",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "u.s",
    "u.k",
    "approx",
    "ca",
    "gen",
    "col",
    "lt",
    "sgt",
    "rev",
    "est",
}
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
            for f in sorted(p.rglob("*")):
                if (
                    f.is_file()
                    and not f.name.startswith(".")
                    and f.name.lower() not in ("readme.md", "license")
                ):
                    yield f
        else:
            raise DataError(f"data.corpus_path: not found: {p}")


def iter_file_sentences(path: Path) -> Iterator[str]:
    """Sentences of one corpus file, WikiExtractor or plain text (detected from content)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    wiki = any(line.startswith("<doc ") for line in lines[:50])
    if not wiki:
        for line in lines:
            if line.strip():
                yield _clean(line)
        return
    expect_title = False
    for line in lines:
        if line.startswith("<doc "):
            expect_title = True
            continue
        if line.startswith("</doc>") or not line.strip():
            continue
        if expect_title:  # the line after <doc ...> repeats the title
            expect_title = False
            continue
        for s in split_sentences(line):
            yield _clean(s)


def build_corpus(
    paths: list[Path],
    exclude: set[str],
    head: list[str],
    max_sentences: int,
    min_words: int,
    max_words: int,
    seed: int,
) -> tuple[list[str], dict[str, int]]:
    """Collect, filter, deduplicate and shuffle the distillation corpus.

    Args:
        paths: corpus files or folders.
        exclude: sentences that must never appear (STS dev/test).
        head: in-domain sentences kept first (STS train), not length-filtered.
        max_sentences: cap on the total.
        min_words, max_words: length filter for the corpus files' sentences.
        seed: shuffle seed.

    Returns:
        The sentences and counts of what was kept and dropped, for metrics.
    """
    excl = {s.strip().lower() for s in exclude}
    seen: set[str] = set()
    stats = {"raw": 0, "too_short": 0, "too_long": 0, "duplicate": 0, "excluded_sts_eval": 0}
    kept_head: list[str] = []
    for s in head:
        key = s.strip().lower()
        if key in excl:
            stats["excluded_sts_eval"] += 1
        elif key not in seen:
            seen.add(key)
            kept_head.append(s.strip())
    pool: list[str] = []
    for f in iter_corpus_files(paths):
        for s in iter_file_sentences(f):
            stats["raw"] += 1
            n = len(s.split())
            if n < min_words:
                stats["too_short"] += 1
                continue
            if n > max_words:
                stats["too_long"] += 1
                continue
            key = s.lower()
            if key in excl:
                stats["excluded_sts_eval"] += 1
                continue
            if key in seen:
                stats["duplicate"] += 1
                continue
            seen.add(key)
            pool.append(s)
    rng = random.Random(seed)
    rng.shuffle(pool)
    kept_head = kept_head[:max_sentences]
    sentences = kept_head + pool[: max(0, max_sentences - len(kept_head))]
    rng.shuffle(sentences)
    if not sentences:
        raise DataError(f"corpus is empty after filtering ({', '.join(map(str, paths))})")
    stats.update(
        {
            "from_sts_train": len(kept_head),
            "from_corpus_files": len(sentences) - len(kept_head),
            "total": len(sentences),
        }
    )
    return sentences, stats


def write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line.replace("\n", " ") + "\n")


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]
