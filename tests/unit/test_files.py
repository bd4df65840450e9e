import pytest

from embopt.pipeline.files import atomic_dir, atomic_file, read_json, write_json


def test_atomic_dir_replaces_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()  # nothing visible until the block ends
    assert (target / "new.txt").read_text() == "new" and not (target / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_and_json(tmp_path):
    f = tmp_path / "m.json"
    write_json(f, {"a": 1})
    with pytest.raises(ValueError), atomic_file(f) as fh:
        fh.write("garbage")
        raise ValueError
    assert read_json(f) == {"a": 1}
