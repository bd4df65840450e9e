"""STS Benchmark pairs.

From a local STS Benchmark folder (tab-separated, no quoting, >= 7 columns: genre, file, year, id, score,
sentence1, sentence2) or from the hub dataset ``sentence-transformers/stsb``. Validation (carved from train),
dev and test sentences never enter the corpus (:mod:`embopt.data.corpus`).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from embopt.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class StsPair:
    s1: str
    s2: str
    score: float  # 0..5, the STS Benchmark scale


def read_sts_file(path: Path) -> list[StsPair]:
    """Parse one STS Benchmark file; a DataError names the file and line of the first malformed row."""
    pairs: list[StsPair] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 7:
            raise DataError(f"{path}:{lineno}: expected >= 7 tab-separated columns, got {len(cols)}")
        try:
            score = float(cols[4])
        except ValueError:
            raise DataError(f"{path}:{lineno}: score column is not a number: {cols[4]!r}") from None
        if not 0.0 <= score <= 5.0:
            raise DataError(f"{path}:{lineno}: score {score} outside 0..5")
        pairs.append(StsPair(cols[5].strip(), cols[6].strip(), score))
    if not pairs:
        raise DataError(f"{path}: no STS pairs found")
    return pairs


def load_sts_local(sts_dir: Path) -> dict[str, list[StsPair]]:
    """Read ``sts-train.csv`` and ``sts-dev.csv`` (and ``sts-test.csv`` if present)."""
    out = {split: read_sts_file(f) for split in SPLITS if (f := Path(sts_dir) / f"sts-{split}.csv").exists()}
    for required in ("train", "dev"):
        if required not in out:
            raise DataError(f"{sts_dir}: missing sts-{required}.csv")
    return out


def load_sts_hub(dataset_id: str) -> dict[str, list[StsPair]]:
    """Load STS with ``datasets.load_dataset`` (a hub id, or a local dataset folder laid out the same way).

    The hub's STSb (``sentence-transformers/stsb``) has splits train/validation/test with columns
    sentence1, sentence2 and a 0..1 score, rescaled here to the local files' 0..5. A DataError of one line
    when the hub cannot be reached (offline) or the dataset lacks a split/column.
    """
    import datasets

    datasets.disable_progress_bars()  # one log line per stage, not a bar per file
    try:
        splits = datasets.load_dataset(dataset_id)
    except Exception as exc:  # offline, unknown id, no network: all end the same way for the user
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"data.sts_hub_id={dataset_id}: cannot load from the hub ({type(exc).__name__}: "
                        f"{reason}); go online (HF_HUB_OFFLINE unset) or set data.source: local with "
                        "data.sts_dir") from None
    out: dict[str, list[StsPair]] = {}
    for split, hub_split in (("train", "train"), ("dev", "validation"), ("test", "test")):
        if hub_split not in splits:
            if split == "test":
                continue
            raise DataError(f"data.sts_hub_id={dataset_id}: no '{hub_split}' split")
        rows = splits[hub_split]
        missing = {"sentence1", "sentence2", "score"} - set(rows.column_names)
        if missing:
            raise DataError(f"data.sts_hub_id={dataset_id} split {hub_split}: no column(s) {sorted(missing)} "
                            "(expected sentence1, sentence2, score)")
        out[split] = [StsPair(a, b, float(score) * 5.0) for a, b, score in
                      zip(rows["sentence1"], rows["sentence2"], rows["score"], strict=True)]
    return out


def load_sts(source: str, sts_dir: Path, hub_id: str) -> tuple[dict[str, list[StsPair]], str]:
    """Pick the STS source: ``local``, ``hub``, or ``auto`` (local when the folder exists)."""
    if source == "local" or (source == "auto" and Path(sts_dir).is_dir()):
        if not Path(sts_dir).is_dir():
            raise DataError(f"data.sts_dir: folder not found: {sts_dir}")
        return load_sts_local(sts_dir), f"local:{sts_dir}"
    log.info("local STS folder %s absent; loading %s from the hub", sts_dir, hub_id)
    return load_sts_hub(hub_id), f"hub:{hub_id}"


def write_sts_tsv(path: Path, pairs: Iterable[StsPair]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("score\tsentence1\tsentence2\n")
        fh.writelines(f"{p.score:.3f}\t{p.s1}\t{p.s2}\n" for p in pairs)


def read_sts_tsv(path: Path) -> list[StsPair]:
    """Read the prepared STS file written by :func:`write_sts_tsv`."""
    pairs = []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header != ["score", "sentence1", "sentence2"]:
            raise DataError(f"{path}:1: expected header 'score<TAB>sentence1<TAB>sentence2'")
        for lineno, line in enumerate(fh, start=2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 columns, got {len(cols)}")
            pairs.append(StsPair(cols[1], cols[2], float(cols[0])))
    return pairs


def unique_sentences(pairs: Iterable[StsPair]) -> list[str]:
    """Sentences of the pairs, first occurrence order, no duplicates."""
    return list(dict.fromkeys(s for p in pairs for s in (p.s1, p.s2)))


def split_validation(pairs: list[StsPair], n_val: int, seed: int) -> tuple[list[StsPair], list[StsPair]]:
    """Carve a validation split of whole *pairs* from STSb train, by a seeded shuffle.

    Every selection the pipeline makes (best checkpoint, int8 candidate, PCA, champion)
    is made on this split, so STSb dev stays a report split that nothing was tuned on.

    Returns:
        (train, val): the remaining train pairs, and ``n_val`` validation pairs.
    """
    if not 0 < n_val < len(pairs):
        raise DataError(f"data.val_pairs={n_val}: must be between 1 and {len(pairs) - 1} (STS train has "
                        f"{len(pairs)} pairs)")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [p for i, p in enumerate(pairs) if i not in val_idx], [pairs[i] for i in sorted(val_idx)]


def split_digest(pairs: Iterable[StsPair]) -> str:
    """A short content hash of a split, recorded in metrics/prepare.json (same split -> same hash)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{p.score}\t{p.s1}\t{p.s2}\n".encode())
    return h.hexdigest()[:16]
