"""Student construction: which teacher layers are kept, and that they are copied exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from embopt.errors import EmboptError
from embopt.training.distill import layer_modules
from embopt.training.modeling import hf_model, num_layers
from embopt.training.student import choose_layers, make_student, uniform_layer_map


@pytest.mark.parametrize(
    ("n_teacher", "count", "expected"),
    [(6, 1, [5]), (6, 2, [0, 5]), (6, 3, [0, 2, 5]), (6, 4, [0, 2, 3, 5]), (6, 6, [0, 1, 2, 3, 4, 5]),
     (4, 2, [0, 3]), (12, 6, [0, 2, 4, 7, 9, 11])],
)
def test_evenly_spaced_layers(n_teacher, count, expected):
    assert choose_layers(n_teacher, None, count) == expected


def test_evenly_spaced_always_keeps_first_and_last_and_the_count():
    for n in range(1, 25):
        for count in range(1, n + 1):
            keep = choose_layers(n, None, count)
            assert len(keep) == count, (n, count, keep)
            assert keep == sorted(set(keep))
            assert keep[-1] == n - 1
            if count > 1:
                assert keep[0] == 0


def test_explicit_layers_win_and_are_sorted():
    assert choose_layers(6, [5, 0, 3], 2) == [0, 3, 5]


@pytest.mark.parametrize(
    ("layers", "count", "fragment"),
    [([], None, "empty list"), ([0, 6], None, "6 is not a layer"), ([-1, 2], None, "-1 is not a layer"),
     ([2, 2], None, "listed more than once"), ([True], None, "True is not a layer"),
     (None, 7, "distill.num_layers: 7"), (None, 0, "distill.num_layers: 0"), (None, None, "set either")],
)
def test_bad_layer_choices_give_one_line_errors(layers, count, fragment):
    with pytest.raises(EmboptError) as err:
        choose_layers(6, layers, count)
    msg = str(err.value)
    assert fragment in msg
    assert "\n" not in msg
    assert msg.startswith("distill")


@pytest.mark.parametrize(
    ("n_student", "n_teacher", "expected"),
    [(2, 6, [2, 5]), (3, 6, [1, 3, 5]), (1, 6, [5]), (4, 4, [0, 1, 2, 3]), (3, 12, [3, 7, 11])],
)
def test_uniform_layer_map_ends_on_the_last_teacher_layer(n_student, n_teacher, expected):
    assert uniform_layer_map(n_student, n_teacher) == expected


def _block_params(block) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in block.state_dict().items()}


@pytest.mark.parametrize(("layers", "count"), [([1, 3], None), ([2], None), (None, 3), (None, 2)])
def test_student_has_exactly_the_chosen_teacher_layers(tiny_model, tmp_path, layers, count):
    teacher = tiny_model
    before = {i: _block_params(b) for i, b in enumerate(layer_modules(teacher))}
    keep = choose_layers(num_layers(teacher), layers, count)
    student = make_student(teacher, keep)

    blocks = layer_modules(student)
    assert len(blocks) == len(keep)
    for i, t_layer in enumerate(keep):
        got = _block_params(blocks[i])
        assert got.keys() == before[t_layer].keys()
        for name, tensor in got.items():
            assert torch.equal(tensor, before[t_layer][name]), (i, t_layer, name)
        # ... and not equal to a neighbouring teacher layer (the comparison can fail).
        other = next(j for j in before if j != t_layer)
        assert not all(torch.equal(got[k], before[other][k]) for k in got)
    s_sd, t_sd = hf_model(student).embeddings.state_dict(), hf_model(teacher).embeddings.state_dict()
    assert all(torch.equal(s_sd[k], t_sd[k]) for k in t_sd)
    assert hf_model(student).config.num_hidden_layers == len(keep)

    # The teacher is untouched and independent of the student.
    assert num_layers(teacher) == 4
    with torch.no_grad():
        next(iter(blocks[0].parameters())).add_(1.0)
    assert torch.equal(next(iter(layer_modules(teacher)[keep[0]].parameters())),
                       next(iter(before[keep[0]].values())))

    # Save/load round-trips with the reduced depth.
    from sentence_transformers import SentenceTransformer

    student.save(str(tmp_path / "student"))
    reloaded = SentenceTransformer(str(tmp_path / "student"), device="cpu")
    assert num_layers(reloaded) == len(keep)


def test_student_of_all_layers_embeds_like_the_teacher(tiny_model):
    teacher = copy.deepcopy(tiny_model)
    student = make_student(teacher, list(range(num_layers(teacher))))
    sents = ["A man is playing a guitar.", "The cat is eating the bread."]
    assert torch.allclose(torch.from_numpy(student.encode(sents)), torch.from_numpy(teacher.encode(sents)))
    fewer = make_student(teacher, [0, 3])
    assert not torch.allclose(torch.from_numpy(fewer.encode(sents)), torch.from_numpy(teacher.encode(sents)),
                              atol=1e-3)


@pytest.mark.parametrize("keep", [4, 0.5])
def test_truncated_safetensors_is_a_one_line_error_naming_the_file(tmp_path, tiny_model_dir, keep):
    import shutil

    from embopt.training.modeling import load_sentence_model

    model = shutil.copytree(tiny_model_dir, tmp_path / "teacher")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(EmboptError) as exc:
        load_sentence_model(str(model))
    msg = str(exc.value)
    assert msg.startswith(f"cannot load model '{model}': {weights}: ") and "\n" not in msg
