"""Structured pruning that physically shrinks the weight matrices.

FFN: each layer's intermediate neurons are scored by ``mean|activation| x ||W_out[:, i]||`` on real
sentences (a neuron that rarely fires or whose output weights are small contributes little); the lowest
are removed by slicing ``intermediate.dense`` rows and ``output.dense`` columns. Hugging Face BERT has one
``intermediate_size`` for all layers, so every layer keeps the same count (its own best neurons).

Heads: scored by :func:`head_scores`, removed with the model's own ``prune_heads`` (which slices Q/K/V/O
and records ``config.pruned_heads`` so that ``from_pretrained`` rebuilds the smaller shapes).

Architectures: BERT-style blocks (BERT, MiniLM) and MPNet, FFN only (its relative position bias is one
table shared by every layer's full set of heads, so a layer with fewer heads no longer matches it);
anything else fails in one line that names ``prune.enabled: false``. Unlike ``torch.nn.utils.prune``
(masks, same matrix sizes), the result has fewer FLOPs and parameters and still loads with
``SentenceTransformer(path)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from embopt.errors import EmboptError
from embopt.training.distill import TrainConfig
from embopt.training.modeling import hf_model

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    ffn_before: int
    ffn_after: int
    heads_before: int
    heads_after: int
    params_before: int
    params_after: int


SKIP_HINT = "set prune.enabled: false to skip pruning"


def attention_parts(layer):
    """(self-attention module, attention output projection) of one block: BERT-style or MPNet.

    The self-attention module carries ``num_attention_heads`` and ``attention_head_size``; the
    output projection's input is the concatenated per-head context.
    """
    att = getattr(layer, "attention", None)
    if att is not None and hasattr(att, "self") and hasattr(getattr(att, "output", None), "dense"):
        return att.self, att.output.dense  # BERT, MiniLM
    if att is not None and hasattr(getattr(att, "attn", None), "o"):
        return att.attn, att.attn.o  # MPNet
    raise EmboptError(f"prune: attention type {type(att).__name__} is not supported "
                      f"(BERT or MPNet blocks); {SKIP_HINT}")


def _bert_layers(hf):
    if not (hasattr(hf, "encoder") and hasattr(hf.encoder, "layer")):
        raise EmboptError(f"prune: unsupported architecture {type(hf).__name__} (BERT-style encoder.layer "
                          f"expected); {SKIP_HINT}")
    layers = list(hf.encoder.layer)
    for layer in layers:
        if not (hasattr(layer, "intermediate") and hasattr(layer, "output") and hasattr(layer, "attention")):
            raise EmboptError(f"prune: layer type {type(layer).__name__} has no "
                              f"intermediate/output/attention; {SKIP_HINT}")
        attention_parts(layer)
    return layers


def _n_heads(layers) -> list[int]:
    return [attention_parts(layer)[0].num_attention_heads for layer in layers]


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def collect_importance(st_model, sentences: Sequence[str], batch_size: int = 32):
    """Mean |activation| per FFN neuron and mean context norm per head, over real tokens.

    Returns:
        (ffn, heads): lists with one tensor per layer, of shape (intermediate,) and (heads,).
    """
    import torch

    layers = _bert_layers(hf_model(st_model))
    ffn_sum, head_sum = [None] * len(layers), [None] * len(layers)
    tokens = 0
    mask_holder: dict[str, torch.Tensor] = {}

    def add(store: list, i: int, values) -> None:  # values (B, T, n): summed over the batch's real tokens
        s = (values * mask_holder["mask"].unsqueeze(-1).to(values.dtype)).sum(dim=(0, 1))
        store[i] = s if store[i] is None else store[i] + s

    def ffn_hook(i: int):
        return lambda _module, _inp, out: add(ffn_sum, i, out.abs())

    def head_hook(i: int, h: int):  # pre-hook on the output projection: its input is the context (B, T, h*d)
        return lambda _module, inp: add(head_sum, i, inp[0].unflatten(-1, (h, -1)).norm(dim=-1))

    hooks = []
    for i, layer in enumerate(layers):
        self_attn, out_proj = attention_parts(layer)
        hooks += [layer.intermediate.register_forward_hook(ffn_hook(i)),
                  out_proj.register_forward_pre_hook(head_hook(i, self_attn.num_attention_heads))]
    st_model.eval()
    prep = st_model.preprocess if hasattr(st_model, "preprocess") else st_model.tokenize
    try:
        with torch.inference_mode():
            for start in range(0, len(sentences), batch_size):
                feats = prep(list(sentences[start : start + batch_size]))
                feats = {k: (v.to(st_model.device) if hasattr(v, "to") else v) for k, v in feats.items()}
                mask_holder["mask"] = feats["attention_mask"]
                tokens += int(feats["attention_mask"].sum())
                st_model(feats)
    finally:
        for h in hooks:
            h.remove()
    return [s / max(tokens, 1) for s in ffn_sum], [s / max(tokens, 1) for s in head_sum]


def prune_ffn(st_model, activation: list, keep_ratio: float) -> tuple[int, int]:
    """Keep the top ``keep_ratio`` FFN neurons of every layer; slice the Linear layers in place."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    hf = hf_model(st_model)
    layers = _bert_layers(hf)
    before = layers[0].intermediate.dense.out_features
    keep_n = max(1, round(before * keep_ratio))
    if keep_n >= before:
        return before, before
    for layer, act in zip(layers, activation, strict=True):
        w_out = layer.output.dense.weight  # (hidden, intermediate)
        score = act.to(w_out.dtype) * w_out.norm(dim=0)
        keep = torch.topk(score, keep_n).indices.sort().values
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    hf.config.intermediate_size = keep_n
    return before, keep_n


def head_scores(layer, activation):
    """Each head's importance in one block: mean context norm x norm of its slice of the output projection."""
    self_attn, out_proj = attention_parts(layer)
    w_o = out_proj.weight  # (hidden, heads*d)
    per_head = w_o.view(w_o.shape[0], self_attn.num_attention_heads, self_attn.attention_head_size)
    return activation.to(w_o.dtype) * per_head.norm(dim=(0, 2))


def prune_heads(st_model, head_activation: list, n_prune: int) -> tuple[int, int]:
    """Remove the ``n_prune`` globally least important heads (at least one head stays per layer)."""
    hf = hf_model(st_model)
    layers = _bert_layers(hf)
    total = sum(_n_heads(layers))
    if n_prune <= 0:
        return total, total
    scored = []
    for li, (layer, act) in enumerate(zip(layers, head_activation, strict=True)):
        score = head_scores(layer, act)
        score = score / score.sum()  # per-layer normalisation: layers differ in scale
        pruned = layer.attention.pruned_heads
        remaining = sorted(set(range(len(score) + len(pruned))) - pruned)
        scored += [(s, li, remaining[local]) for local, s in enumerate(score.tolist())]
    chosen: dict[int, list[int]] = {}
    left = dict(enumerate(_n_heads(layers)))
    for _s, li, head in sorted(scored):
        if sum(map(len, chosen.values())) >= n_prune:
            break
        if left[li] > 1:
            chosen.setdefault(li, []).append(head)
            left[li] -= 1
    hf.prune_heads(chosen)
    log.info("pruned heads %s", chosen)
    return total, sum(_n_heads(layers))


def prune_model(st_model, sentences: Sequence[str], ffn_keep_ratio: float, heads_to_prune: int
                ) -> PruneReport:
    """Score with real activations, then remove heads and FFN neurons in place."""
    hf = hf_model(st_model)
    _bert_layers(hf)  # an unsupported architecture fails here, before any work
    if heads_to_prune > 0 and getattr(hf.encoder, "relative_attention_bias", None) is not None:  # MPNet
        raise EmboptError(f"prune.heads_to_prune: {type(hf).__name__} adds one relative position bias, "
                          "shared by all layers, to every head: head pruning is not supported; set "
                          "prune.heads_to_prune: 0 (FFN pruning works)")
    params_before = count_params(st_model)
    ffn_act, head_act = collect_importance(st_model, sentences)
    heads_before, heads_after = prune_heads(st_model, head_act, heads_to_prune)
    ffn_before, ffn_after = prune_ffn(st_model, ffn_act, ffn_keep_ratio)
    report = PruneReport(ffn_before, ffn_after, heads_before, heads_after, params_before,
                         count_params(st_model))
    log.info("pruned: FFN %d -> %d per layer, heads %d -> %d, params %d -> %d", ffn_before, ffn_after,
             heads_before, heads_after, report.params_before, report.params_after)
    return report


def unpruned_report(st_model) -> PruneReport:
    """The :class:`PruneReport` of a model left as it is (``prune.enabled: false``), for any architecture."""
    cfg = hf_model(st_model).config
    ffn = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "hidden_dim", 0) or 0)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 0) or 0)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layers", 0) or 0)
    n = count_params(st_model)
    return PruneReport(ffn, ffn, heads * layers, heads * layers, n, n)


def recovery_config(p, seed: int) -> TrainConfig:
    """The recovery distillation after pruning, from ``params.prune`` (``p``): plain MSE on the teacher's
    embeddings, no evaluation or checkpoints in between (it is short), its own seed."""
    return TrainConfig(epochs=p.recovery_epochs, batch_size=p.batch_size, lr=p.lr, warmup_ratio=0.1,
                       weight_decay=0.01, max_grad_norm=1.0, max_seq_length=p.max_seq_length, loss="mse",
                       eval_every=10**9, checkpoint_every=10**9, early_stopping_patience=0, seed=seed + 1)
