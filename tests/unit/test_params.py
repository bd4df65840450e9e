from pathlib import Path

import pytest
import yaml

from embopt.errors import ParamsError
from embopt.pipeline.params import Params, flatten, load_params

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_load():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    assert p.promote.alias == "champion"


def test_tiny_profile_loads(tmp_path):
    text = (REPO / "tests/profiles/params.tiny.yaml").read_text().replace("@FIXTURES@", str(tmp_path))
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").distill.num_layers == 2


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("distill:\n  epoch: 2\n", "unknown key 'distill.epoch'"),
        ("distil:\n  epochs: 2\n", "unknown key 'distil'"),
        ("distill:\n  epochs: two\n", "key 'distill.epochs'"),
        ("pca:\n  gate:\n    min_retention: 0.9\n", "unknown key 'pca.gate.min_retention'"),
        ("data:\n  min_words: 10\n  max_words: 5\n", "min_words must be <= max_words"),
        ("teacher_embed:\n  engine: spark\n  backend: torch\n", "engine spark runs the fp32 ONNX teacher"),
        ("- a\n- b\n", "top level must be a mapping"),
    ],
)
def test_bad_params_name_key_and_file(tmp_path, yaml_text, fragment):
    f = tmp_path / "params.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ParamsError) as exc:
        load_params(f)
    msg = str(exc.value)
    assert str(f) in msg and fragment in msg and "\n" not in msg


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("base:\n  seed: 1\n  teacher: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params.yaml:\d+: invalid YAML"):
        load_params(f)


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("", "empty file (missing section 'base')"),
        ("# only a comment\n", "empty file (missing section 'base')"),
        ("base:\n  seed: 1\n", "missing section 'promote' (built-in defaults are not used)"),
        ("base:\n  seed: 1\npromote:\n", "empty section 'promote' (built-in defaults are not used)"),
        ("base:\n  seed: 1\npromote: {}\n", "empty section 'promote' (built-in defaults are not used)"),
    ],
)
def test_a_section_the_caller_reads_must_be_in_the_file(tmp_path, yaml_text, fragment):
    f = tmp_path / "params.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ParamsError) as exc:
        load_params(f, sections=("base", "promote"))
    assert str(exc.value) == f"{f}: {fragment}"
    f.write_text("base:\n  seed: 1\npromote:\n  alias: best\n")
    assert load_params(f, sections=("base", "promote")).promote.alias == "best"


def test_empty_params_stop_promote_before_the_registry(tmp_path, monkeypatch, capsys):
    import stage_project

    (tmp_path / "params.yaml").write_text("")
    code, err = stage_project.run("promote", monkeypatch, tmp_path, capsys)
    assert code == 1
    expected = f"promote: error: {tmp_path / 'params.yaml'}: empty file (missing section 'base')"
    assert err.strip().splitlines()[-1] == expected
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "metrics").exists()


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def _defaults(model) -> dict:
    """The defaults a params model would fill in, nested like params.yaml."""
    from pydantic import BaseModel

    out = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            continue
        value = field.get_default(call_default_factory=True)
        out[name] = _defaults(type(value)) if isinstance(value, BaseModel) else value
    return out


def _compare(defaults: dict, yaml_values: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key, value in defaults.items():
        if key not in yaml_values:
            continue  # not written in params.yaml: the model's default is the only one
        if isinstance(value, dict):
            diffs += _compare(value, yaml_values[key] or {}, f"{prefix}{key}.")
        elif value != yaml_values[key]:
            diffs.append(f"{prefix}{key}: params.py says {value!r}, params.yaml says {yaml_values[key]!r}")
    return diffs


def test_model_defaults_agree_with_params_yaml():
    # params.yaml is the source of truth; a default in params.py that differs is a second,
    # silently different set of numbers (used by tests and by anyone building Params()).
    from embopt.pipeline.params import Params

    diffs = _compare(_defaults(Params), yaml.safe_load((REPO / "params.yaml").read_text()))
    assert not diffs, "\n".join(diffs)
