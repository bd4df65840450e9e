from pathlib import Path

import pytest

from embopt.data.corpus import build_corpus, iter_file_sentences, split_sentences
from embopt.data.sts import StsPair, load_sts, read_sts_file, read_sts_tsv, unique_sentences, write_sts_tsv
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
    assert stats["corpus_files"]["excluded_sts_eval"] > 0  # the fixture corpus shares sentences with dev


def test_length_filter(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("Too short.\nThis one has exactly six words.\n" + " ".join(["long"] * 80) + ".\n")
    sents, stats = build_corpus([f], set(), [], 10, 3, 60, seed=0)
    assert sents == ["This one has exactly six words."]
    assert stats["corpus_files"]["too_short"] == 1 and stats["corpus_files"]["too_long"] == 1


def test_empty_corpus_and_missing_path(tmp_path):
    (tmp_path / "c.txt").write_text("x\n")
    with pytest.raises(DataError, match=r"no corpus sentence kept from 1 file.*too short 1"):
        build_corpus([tmp_path / "c.txt"], set(), ["An STS train sentence here."], 10, 3, 60, seed=0)
    with pytest.raises(DataError, match="data.corpus_path: not found"):
        build_corpus([Path(tmp_path / "nope")], set(), [], 10, 3, 60, seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data.corpus_path: no corpus files in"):
        build_corpus([tmp_path / "empty"], set(), ["An STS train sentence here."], 10, 3, 60, seed=0)


PARAGRAPH = "Dr. Smith visited the U.S. Army base in 1990. It rained all day! Was it worth it? Yes, it was."
SPLIT = ["Dr. Smith visited the U.S. Army base in 1990.", "It rained all day!", "Was it worth it?",
         "Yes, it was."]


def _write_table(path: Path, rows: list[dict]) -> Path:
    import csv
    import json

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_table_corpus_reads_the_declared_column_split_into_sentences(tmp_path, suffix):
    rows = [{"id": "1", "body": PARAGRAPH}, {"id": "2", "body": "One more sentence here."},
            {"id": "3", "body": ""}]
    f = _write_table(tmp_path / f"c{suffix}", rows)
    assert list(iter_file_sentences(f, "auto", "body")) == [*SPLIT, "One more sentence here."]
    with pytest.raises(DataError, match=r"no (column|'text' field).*data.text_column"):
        list(iter_file_sentences(f, "auto", "text"))


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("c.jsonl", '{"text": "fine sentence"}\n{"text": 3}\n', ":2: text is int, not a string"),
        ("c.jsonl", '{"text": "fine"}\n{"text": [1]}\n', ":2: text is list"),
        ("c.jsonl", '{"text": "fine"}\n["a"]\n', ":2: expected a JSON object"),
        ("c.jsonl", '{"text": "fine"}\n{"text": "unterminated\n', ":2: invalid JSON"),
        ("c.csv", 'text\n"an unterminated quote\nnext line\n', "malformed CSV"),
        ("c.parquet", "not parquet at all", "not a Parquet file"),
    ],
)
def test_bad_table_rows_name_file_and_row(tmp_path, name, content, fragment):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        list(iter_file_sentences(f))
    assert str(f) in str(exc.value) and fragment in str(exc.value) and "\n" not in str(exc.value)


def test_paragraph_per_line_text_is_split_and_declared_lines_are_not(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(PARAGRAPH + "\nA single sentence line.\n", encoding="utf-8")
    assert list(iter_file_sentences(f)) == [*SPLIT, "A single sentence line."]
    assert list(iter_file_sentences(f, "lines")) == [PARAGRAPH, "A single sentence line."]


def test_long_paragraphs_split_in_windows_as_pysbd_splits_them_whole():
    import pysbd

    from embopt.data.corpus import split_paragraph

    text = " ".join([PARAGRAPH] * 30)  # 2.8 kB: pysbd alone takes ~0.2 s, its time grows quadratically
    whole = [s.strip() for s in pysbd.Segmenter(language="en", clean=False).segment(text)]
    assert split_paragraph(text) == whole == SPLIT * 30


def test_sts_train_share_leaves_room_for_corpus_files_and_counts_every_drop(corpus_dir, dev_pairs):
    head = [f"Train sentence number {i} of the benchmark." for i in range(200)]
    head.append(head[0])
    dev = set(unique_sentences(dev_pairs))
    sents, stats = build_corpus([corpus_dir], dev, head, 50, 3, 40, 1, head_share=0.2)
    assert len(sents) == 50
    assert stats["sts_train"] == {"offered": 201, "excluded_sts_eval": 0, "duplicate": 1, "over_share": 190,
                                  "kept": 10}
    files = stats["corpus_files"]
    assert files["kept"] == 40 and files["files"] == 1 and files["excluded_sts_eval"] > 0
    assert files["raw"] == sum(files[k] for k in ("too_short", "too_long", "excluded_sts_eval", "duplicate",
                                                   "over_cap", "kept"))
    # A source short of its share leaves the rest to the other; share 0 takes none.
    _, few = build_corpus([corpus_dir], set(), head[:3], 50, 3, 40, 1, head_share=0.5)
    assert few["sts_train"]["kept"] == 3 and few["corpus_files"]["kept"] == 47
    _, none = build_corpus([corpus_dir], set(), head, 50, 3, 40, 1, head_share=0.0)
    assert none["sts_train"]["kept"] == 0 and none["corpus_files"]["kept"] == 50


def test_hub_sts_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as exc:
        load_sts("hub", Path("/nonexistent"), "sentence-transformers/stsb")
    assert "data.sts_hub_id=sentence-transformers/stsb: cannot load from the hub" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_hub_dataset_through_datasets_is_rescaled(tmp_path, monkeypatch):
    # load_dataset takes a local folder laid out like the hub's sentence-transformers/stsb
    # (data/<split>-*.parquet), so the real `datasets` path runs offline.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    row = {"sentence1": "A cat.", "sentence2": "A dog.", "score": 0.5}
    repo = tmp_path / "stsb"
    (repo / "data").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        _write_table(repo / "data" / f"{split}-00000-of-00001.parquet", [row, row])
    sts, source = load_sts("hub", tmp_path / "absent", str(repo))
    assert source == f"hub:{repo}"
    assert sorted(sts) == ["dev", "test", "train"]
    assert sts["dev"][0] == StsPair("A cat.", "A dog.", 2.5)

    bad = tmp_path / "bad"
    (bad / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        _write_table(bad / "data" / f"{split}-00000-of-00001.parquet", [{"s1": "A", "s2": "B", "score": 0.5}])
    with pytest.raises(DataError, match=r"split train: no column\(s\) \['sentence1', 'sentence2'\]"):
        load_sts("hub", tmp_path / "absent", str(bad))


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


def test_prepare_on_own_paragraph_text_with_a_small_cap(tmp_path, sts_dir, monkeypatch, capsys):
    """The issue's case: a small cap used to be filled by STSb-train sentences (0 from the user's file)."""
    import json

    import stage_project
    import tiny

    from embopt.data.corpus import read_lines

    own = tmp_path / "own.txt"
    sents = tiny.sentences(120, seed=21)
    own.write_text("\n".join(" ".join(sents[i:i + 3]) for i in range(0, 120, 3)) + "\n", encoding="utf-8")
    stage_project.write_params(tmp_path, {"data": {
        "source": "local", "sts_dir": str(sts_dir), "corpus_path": str(own), "val_pairs": 30,
        "corpus_max_sentences": 50, "sts_train_share": 0.2, "min_words": 1, "max_words": 80}})
    code, err = stage_project.run("prepare", monkeypatch, tmp_path, capsys)
    assert code == 0, err
    corpus = read_lines(tmp_path / "data" / "prepared" / "corpus.txt")
    stats = json.loads((tmp_path / "metrics" / "prepare.json").read_text())["corpus"]
    assert len(corpus) == 50 == stats["total"]
    assert stats["sts_train"]["kept"] == 10 and stats["corpus_files"]["kept"] == 40
    assert stats["corpus_files"]["raw"] == 120  # 40 lines of 3 sentences, split
    assert "corpus: 50 sentences; from STSb train" in err
