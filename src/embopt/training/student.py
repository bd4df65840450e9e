"""Building a student from a teacher: which layers it keeps, and copying them.

Kept apart from :mod:`embopt.training.modeling` (loading models), which the teacher_embed stage
depends on: editing how students are built must never re-encode the corpus.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

from embopt.errors import EmboptError
from embopt.training.modeling import blocks_parent, hf_model

if TYPE_CHECKING:  # torch is heavy; import it where it is used
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


def choose_layers(n_teacher: int, layers: list[int] | None, count: int | None) -> list[int]:
    """Which teacher layers the student keeps.

    Explicit ``layers`` win. Otherwise ``count`` layers evenly spaced over the teacher,
    first and last included (DistilBERT-style initialisation); keeping the last
    layer matters because the teacher's pooled output is read after it.
    """
    if layers is not None:
        if not layers:
            raise EmboptError(f"distill.layers: empty list; give teacher layer indices in 0..{n_teacher - 1} "
                              "or null to use distill.num_layers")
        bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_teacher]
        if bad:
            raise EmboptError(f"distill.layers: {bad[0]!r} is not a layer of the teacher "
                              f"(it has {n_teacher} layers: 0..{n_teacher - 1})")
        dup = sorted({i for i in layers if layers.count(i) > 1})
        if dup:
            raise EmboptError(f"distill.layers: layer {dup[0]} is listed more than once in {layers}")
        return sorted(layers)
    if count is None:
        raise EmboptError("distill: set either layers or num_layers")
    if not 1 <= count <= n_teacher:
        raise EmboptError(f"distill.num_layers: {count} must be in 1..{n_teacher} "
                          f"(the teacher has {n_teacher} layers)")
    if count == 1:
        return [n_teacher - 1]
    step = (n_teacher - 1) / (count - 1)
    return sorted({round(i * step) for i in range(count)})


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer matched to each student layer when the student was not cut from the teacher.

    TinyBERT's uniform mapping: student layer i (0-based) follows teacher layer
    ``(i + 1) * n_teacher / n_student - 1``, so the last student layer meets the last teacher layer.
    """
    return [max(0, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def make_student(teacher: SentenceTransformer, keep: list[int]) -> SentenceTransformer:
    """Copy the teacher, keeping only the blocks in ``keep`` (weights copied, not re-initialised)."""
    import torch

    student = copy.deepcopy(teacher)
    hf = hf_model(student)
    parent = blocks_parent(hf)
    blocks = parent.layer
    parent.layer = torch.nn.ModuleList([blocks[i] for i in keep])
    # The config must agree with the module list so that save/load round-trips (DistilBERT's: n_layers).
    hf.config.num_hidden_layers = len(keep)
    log.info("student keeps teacher layers %s (%d of %d)", keep, len(keep), len(blocks))
    return student
