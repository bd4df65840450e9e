from pathlib import Path

import pytest

from embopt.data.corpus import build_corpus, iter_file_sentences, split_sentences
from embopt.data.sts import load_sts, read_sts_file, read_sts_tsv, unique_sentences, write_sts_tsv
from embopt.errors import DataError


def test_read_sts_local(sts_dir):
    sts, source = load_sts("auto", sts_dir, "unused/hub-id")
    assert source.startswith("local:")
    assert len(sts["train"]) == 100 and len(sts["dev"]) == 40
    assert all(0 <= p.score <= 5 for p in sts["dev"])


def test_sts_extra_columns_are_fine(tmp_path):
    f = tmp_path / "sts-dev.csv"
    f.write_text("g\tf\t2012\t1\t4.0\tA cat.\tA dog.\textra\tcolumns\n")
    assert read_sts_file(f)[0].s2 == "A dog."


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("g\tf\t2012\t1\t4.0\tA cat.\n", ":1: expected >= 7"),
        ("g\tf\t2012\t1\t4.0\tA\tB\ng\tf\t2012\t1\tfour\tA\tB\n", ":2: score column is not a number"),
        ("g\tf\t2012\t1\t7.5\tA\tB\n", ":1: score 7.5 outside 0..5"),
        ("\n\n", "no STS pairs found"),
    ],
)
def test_bad_sts_rows_name_file_and_line(tmp_path, content, fragment):
    f = tmp_path / "sts-train.csv"
    f.write_text(content)
    with pytest.raises(DataError) as exc:
        read_sts_file(f)
    assert str(f) in str(exc.value) and fragment in str(exc.value)


def test_missing_split(tmp_path):
    (tmp_path / "sts-train.csv").write_text("g\tf\t2012\t1\t4.0\tA\tB\n")
    with pytest.raises(DataError, match="missing sts-dev.csv"):
        load_sts("local", tmp_path, "x")


def test_non_utf8(tmp_path):
    f = tmp_path / "sts-dev.csv"
    f.write_bytes(b"g\tf\t2012\t1\t4.0\t\xff\xfe\tB\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_sts_file(f)


def test_prepared_tsv_roundtrip(tmp_path, dev_pairs):
    write_sts_tsv(tmp_path / "dev.tsv", dev_pairs)
    assert read_sts_tsv(tmp_path / "dev.tsv") == [type(p)(p.s1, p.s2, round(p.score, 3)) for p in dev_pairs]


@pytest.mark.parametrize(
    "paragraph, expected",
    [
        ("He left. She stayed.", ["He left.", "She stayed."]),
        (
            "Dr. Smith met J. R. R. Tolkien in the U.S. Army. It rained!",
            ["Dr. Smith met J. R. R. Tolkien in the U.S. Army.", "It rained!"],
        ),
        ('Is it 1922? Yes ("it is"). Maybe', ["Is it 1922?", 'Yes ("it is").', "Maybe"]),
    ],
)
def test_split_sentences(paragraph, expected):
    assert split_sentences(paragraph) == expected


def test_wikiextractor_parsing(corpus_dir):
    sents = list(iter_file_sentences(corpus_dir / "wiki_00"))
    assert sents and not any(s.startswith("<doc") or s.startswith("</doc") for s in sents)
    assert "Doc 0" not in sents  # title lines dropped


def test_plain_text_corpus(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("One sentence per line here.\n\nAnother one, also fine.\n")
    assert list(iter_file_sentences(f)) == ["One sentence per line here.", "Another one, also fine."]


def test_build_corpus_excludes_dev_dedups_caps_and_is_seeded(corpus_dir, dev_pairs):
    dev = set(unique_sentences(dev_pairs))
    head = ["A head sentence.", "A head sentence."]
    a, stats = build_corpus([corpus_dir], dev, head, 50, 3, 40, seed=1)
    b, _ = build_corpus([corpus_dir], dev, head, 50, 3, 40, seed=1)
    c, _ = build_corpus([corpus_dir], dev, head, 50, 3, 40, seed=2)
    assert a == b and a != c
    assert len(a) == 50 == stats["total"]
    assert len({s.lower() for s in a}) == len(a)
    assert "A head sentence." in a
    assert not dev & set(a)
    assert stats["excluded_sts_eval"] > 0  # the fixture corpus shares sentences with dev


def test_length_filter(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("Too short.\nThis one has exactly six words.\n" + " ".join(["long"] * 80) + ".\n")
    sents, stats = build_corpus([f], set(), [], 10, 3, 60, seed=0)
    assert sents == ["This one has exactly six words."]
    assert stats["too_short"] == 1 and stats["too_long"] == 1


def test_empty_corpus_and_missing_path(tmp_path):
    (tmp_path / "c.txt").write_text("x\n")
    with pytest.raises(DataError, match="corpus is empty"):
        build_corpus([tmp_path / "c.txt"], set(), [], 10, 3, 60, seed=0)
    with pytest.raises(DataError, match="data.corpus_path: not found"):
        build_corpus([Path(tmp_path / "nope")], set(), [], 10, 3, 60, seed=0)


def test_validation_split_is_seeded_disjoint_and_whole_pairs(sts_dir):
    from embopt.data.sts import load_sts_local, split_validation

    train = load_sts_local(sts_dir)["train"]
    rest, val = split_validation(train, 30, seed=5)
    assert len(val) == 30 and len(rest) == len(train) - 30
    assert set(map(id, rest)).isdisjoint(map(id, val)) and sorted(rest + val, key=train.index) == train
    assert split_validation(train, 30, seed=5) == (rest, val)
    assert split_validation(train, 30, seed=6)[1] != val
    with pytest.raises(DataError, match="data.val_pairs=.*between 1 and"):
        split_validation(train, len(train), seed=5)


def test_prepare_keeps_val_and_dev_sentences_out_of_the_corpus(
    tmp_path, sts_dir, corpus_dir, monkeypatch, capsys
):
    import json

    import stage_project

    from embopt.data.corpus import read_lines
    from embopt.data.sts import read_sts_tsv, unique_sentences

    stage_project.write_params(tmp_path, {"data": {
        "source": "local", "sts_dir": str(sts_dir), "corpus_path": str(corpus_dir), "val_pairs": 30,
        "corpus_max_sentences": 10_000, "min_words": 1, "max_words": 80}})
    code, err = stage_project.run("prepare", monkeypatch, tmp_path, capsys)
    assert code == 0, err
    prepared = tmp_path / "data" / "prepared"
    corpus = {s.lower() for s in read_lines(prepared / "corpus.txt")}
    splits = {s: read_sts_tsv(prepared / f"sts_{s}.tsv") for s in ("train", "val", "dev")}
    for split in ("val", "dev"):
        assert not corpus & {s.lower() for s in unique_sentences(splits[split])}, split
    # The train sentences that are not also in a val/dev pair are in the corpus (include_sts_train).
    held = {s.lower() for s in unique_sentences(splits["val"] + splits["dev"])}
    assert {s.lower() for s in unique_sentences(splits["train"])} - held <= corpus
    metrics = json.loads((tmp_path / "metrics" / "prepare.json").read_text())
    assert metrics["sts_pairs"] == {k: len(v) for k, v in splits.items()}
    hashes = metrics["sts_sha256"]
    assert set(hashes) == {"train", "val", "dev"} and len(set(hashes.values())) == 3
