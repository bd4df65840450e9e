"""Structured pruning that physically shrinks the weight matrices.

FFN: each layer's intermediate neurons are scored by ``mean|activation| x ||W_out[:, i]||``
on real sentences (a neuron that rarely fires or whose output weights are small
contributes little), and the lowest are removed by slicing ``intermediate.dense``
rows and ``output.dense`` columns. Hugging Face BERT has one ``intermediate_size``
for all layers, so every layer keeps the same count (its own best neurons).

Heads: each head is scored by the mean norm of its context vectors times the norm
of its slice of the attention output projection, and removed with the model's own
``prune_heads`` (which slices Q/K/V/O and records ``config.pruned_heads`` so that
``from_pretrained`` rebuilds the smaller shapes).

Architectures: BERT-style blocks (BERT, MiniLM: ``attention.self`` and
``attention.output.dense``) and MPNet (``attention.attn`` with its ``o`` projection;
FFN only: its relative position bias is one table shared by every layer's full set of
heads, so a layer with fewer heads no longer matches it); anything else fails in one
line that names ``prune.enabled: false``.

Unlike ``torch.nn.utils.prune`` (masks, same matrix sizes), the result has fewer
FLOPs and fewer parameters, and still loads with ``SentenceTransformer(path)``.
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
        raise EmboptError(
            f"prune: unsupported architecture {type(hf).__name__} (BERT-style encoder.layer expected); "
            f"{SKIP_HINT}"
        )
    layers = list(hf.encoder.layer)
    for layer in layers:
        if not (hasattr(layer, "intermediate") and hasattr(layer, "output") and hasattr(layer, "attention")):
            raise EmboptError(
                f"prune: layer type {type(layer).__name__} has no intermediate/output/attention; {SKIP_HINT}"
            )
        attention_parts(layer)
    return layers


def check_head_pruning(hf) -> None:
    """Refuse head pruning where heads share a cross-layer table (MPNet's relative position bias)."""
    if getattr(getattr(hf, "encoder", None), "relative_attention_bias", None) is not None:
        raise EmboptError(f"prune.heads_to_prune: {type(hf).__name__} adds one relative position bias, "
                          "shared by all layers, to every head: head pruning is not supported; set "
                          "prune.heads_to_prune: 0 (FFN pruning works)")


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def collect_importance(st_model, sentences: Sequence[str], batch_size: int = 32):
    """Mean |activation| per FFN neuron and mean context norm per head, over real tokens.

    Returns:
        (ffn, heads): lists with one tensor per layer, of shape (intermediate,) and (heads,).
    """
    import torch

    hf = hf_model(st_model)
    layers = _bert_layers(hf)
    ffn_sum = [None] * len(layers)
    head_sum = [None] * len(layers)
    tokens = 0
    mask_holder: dict[str, torch.Tensor] = {}
    hooks = []

    def ffn_hook(i):
        def fn(_module, _inp, out):
            m = mask_holder["mask"].unsqueeze(-1).to(out.dtype)
            s = (out.abs() * m).sum(dim=(0, 1))
            ffn_sum[i] = s if ffn_sum[i] is None else ffn_sum[i] + s

        return fn

    def head_hook(i, n_heads):
        # A pre-hook on the output projection: its input is the per-head context (B, T, heads*d).
        def fn(_module, inp):
            ctx = inp[0]
            b, t, hd = ctx.shape
            norms = ctx.view(b, t, n_heads, hd // n_heads).norm(dim=-1)  # (B, T, heads)
            m = mask_holder["mask"].unsqueeze(-1).to(norms.dtype)
            s = (norms * m).sum(dim=(0, 1))
            head_sum[i] = s if head_sum[i] is None else head_sum[i] + s

        return fn

    for i, layer in enumerate(layers):
        hooks.append(layer.intermediate.register_forward_hook(ffn_hook(i)))
        self_attn, out_proj = attention_parts(layer)
        hooks.append(out_proj.register_forward_pre_hook(head_hook(i, self_attn.num_attention_heads)))
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
    ffn = [s / max(tokens, 1) for s in ffn_sum]
    heads = [s / max(tokens, 1) for s in head_sum]
    return ffn, heads


def prune_ffn(st_model, activation: list, keep_ratio: float) -> tuple[int, int]:
    """Keep the top ``keep_ratio`` FFN neurons of every layer; slice the Linear layers in place."""
    import torch

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
        layer.intermediate.dense = slice_linear(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = slice_linear(layer.output.dense, keep, dim=1)
    hf.config.intermediate_size = keep_n
    return before, keep_n


def slice_linear(linear, index, dim: int):
    """A new nn.Linear holding the selected output rows (dim=0) or input columns (dim=1)."""
    import torch

    w = linear.weight.detach().index_select(dim, index).clone()
    b = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and b is not None:
        b = b.index_select(0, index).clone()
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


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
    total = sum(attention_parts(layer)[0].num_attention_heads for layer in layers)
    if n_prune <= 0:
        return total, total
    check_head_pruning(hf)
    scored = []
    for li, (layer, act) in enumerate(zip(layers, head_activation, strict=True)):
        att = layer.attention
        score = head_scores(layer, act)
        score = score / score.sum()  # per-layer normalisation: layers differ in scale
        remaining = sorted(set(range(len(score) + len(att.pruned_heads))) - att.pruned_heads)
        for local, s in enumerate(score.tolist()):
            scored.append((s, li, remaining[local]))
    scored.sort()
    chosen: dict[int, list[int]] = {}
    left = {li: attention_parts(layer)[0].num_attention_heads for li, layer in enumerate(layers)}
    for _s, li, head in scored:
        if sum(len(v) for v in chosen.values()) >= n_prune:
            break
        if left[li] <= 1:
            continue
        chosen.setdefault(li, []).append(head)
        left[li] -= 1
    hf.prune_heads(chosen)
    after = sum(attention_parts(layer)[0].num_attention_heads for layer in layers)
    log.info("pruned heads %s", chosen)
    return total, after


def prune_model(
    st_model, sentences: Sequence[str], ffn_keep_ratio: float, heads_to_prune: int
) -> PruneReport:
    """Score with real activations, then remove heads and FFN neurons in place."""
    hf = hf_model(st_model)
    layers = _bert_layers(hf)
    if heads_to_prune > 0:
        check_head_pruning(hf)
    params_before = count_params(st_model)
    heads_before = sum(attention_parts(layer)[0].num_attention_heads for layer in layers)
    ffn_act, head_act = collect_importance(st_model, sentences)
    _, heads_after = prune_heads(st_model, head_act, heads_to_prune)
    ffn_before, ffn_after = prune_ffn(st_model, ffn_act, ffn_keep_ratio)
    report = PruneReport(
        ffn_before, ffn_after, heads_before, heads_after, params_before, count_params(st_model)
    )
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
