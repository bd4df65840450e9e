"""Where pruning breaks: FFN neurons and attention heads removed from the distilled student.

Each point starts from the distill stage's student (``models/distill``, or ``--student``), prunes it
as the prune stage does (importance from corpus activations, matrices sliced) and runs the stage's recovery
distillation with ``params.yaml``'s prune settings; only ``ffn_keep_ratio`` and ``heads_to_prune``
change. Quality is read on the validation split (retention of the teacher's val Spearman), as every
choice in the pipeline is; speed is the dynamic int8 ONNX graph of each point through embopt's
runtime, all points timed in one interleaved run on the same validation sentences and threads,
as a ratio to the unpruned student's int8 graph. The pipeline's own pruned model (``models/prune``)
is one more point, taken as it is.

A point may also narrow the residual stream (``KEEP:wWIDTH``, e.g. ``0.25:w256``): the hidden dims with
the largest mean square over every LayerNorm output on corpus tokens stay, and every matrix that reads
or writes the stream is sliced. Hugging Face derives the head size from ``hidden_size /
num_attention_heads``, so each layer keeps its ``WIDTH / head_size`` most important heads. The student
is then narrower than the teacher's targets: its recovery uses an in-batch structure loss
(``--narrow-loss`` ``sim`` or ``kl``: no learned projection) at ``--narrow-lr``. Not a stage option:
it lost (README, "A narrower residual stream").

Usage (from the repository root, after ``make repro``)::

    PYTHONPATH=src .venv/bin/python scripts/prune_sweep.py --points 0.5:0 0.25:0 0.75:6 0.75:12
    PYTHONPATH=src .venv/bin/python scripts/prune_sweep.py --points 0.25:w256 --recovery-sentences 30000 \
        --out reports/bench/narrow_hidden

Prints a markdown table and writes it, with the raw numbers, to ``reports/bench/prune_sweep.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from embopt.bench.simple_bundle import build_simple_bundle
from embopt.bench.timing import interleaved, pin_threads
from embopt.data.corpus import read_lines
from embopt.data.sts import read_sts_tsv, unique_sentences
from embopt.eval.evaluate import cpu_name
from embopt.eval.sts import retention, sts_spearman
from embopt.pipeline import config
from embopt.pipeline.files import read_json, write_json
from embopt.pipeline.params import load_params
from embopt.serving.runtime import Embedder
from embopt.training.distill import train_student
from embopt.training.modeling import hf_model, load_sentence_model
from embopt.training.prune import (
    attention_parts,
    collect_importance,
    count_params,
    head_scores,
    prune_model,
    recovery_config,
)


def point(text: str) -> tuple[float, int, int | None]:
    """``KEEP:HEADS`` -> (keep, heads to prune, None); ``KEEP:wWIDTH`` -> (keep, 0, width)."""
    keep, _, rest = text.partition(":")
    if rest.startswith("w"):
        return float(keep), 0, int(rest[1:])
    return float(keep), int(rest or 0), None


def narrow_hidden(model, sentences: list[str], width: int) -> None:
    """Slice the residual stream of a BERT-style ``model`` to ``width`` dims in place (see the module doc)."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    hf = hf_model(model)
    layers = list(hf.encoder.layer)
    head_size = attention_parts(layers[0])[0].attention_head_size
    per_layer = width // head_size
    _, head_act = collect_importance(model, sentences)
    prune = {}
    for i, (layer, act) in enumerate(zip(layers, head_act, strict=True)):
        score = head_scores(layer, act)
        prune[i] = torch.topk(-score, len(score) - per_layer).indices.tolist()
    hf.prune_heads({i: h for i, h in prune.items() if h})
    norms = [hf.embeddings.LayerNorm]
    norms += [n for b in layers for n in (b.attention.output.LayerNorm, b.output.LayerNorm)]
    total, mask = torch.zeros(hf.config.hidden_size), {}

    def accumulate(_module, _inputs, out) -> None:  # mean square per dim over real tokens
        total.add_((out.pow(2) * mask["m"].unsqueeze(-1)).sum((0, 1)))

    hooks = [n.register_forward_hook(accumulate) for n in norms]
    with torch.inference_mode():
        for start in range(0, len(sentences), 32):
            feats = model.preprocess(sentences[start:start + 32])
            mask["m"] = feats["attention_mask"].float()
            model(feats)
    for h in hooks:
        h.remove()
    keep = torch.topk(total, width).indices.sort().values
    with torch.no_grad():
        for table in (hf.embeddings.word_embeddings, hf.embeddings.position_embeddings,
                      hf.embeddings.token_type_embeddings):
            table.weight = torch.nn.Parameter(table.weight[:, keep].clone())
            table.embedding_dim = width
        for norm in norms:
            norm.weight, norm.bias = (torch.nn.Parameter(norm.weight[keep].clone()),
                                      torch.nn.Parameter(norm.bias[keep].clone()))
            norm.normalized_shape = (width,)
    for b in layers:
        self_attn = b.attention.self
        for name in ("query", "key", "value"):
            setattr(self_attn, name, prune_linear_layer(getattr(self_attn, name), keep, dim=1))
        b.attention.output.dense = prune_linear_layer(b.attention.output.dense, keep, dim=0)
        b.intermediate.dense = prune_linear_layer(b.intermediate.dense, keep, dim=1)
        b.output.dense = prune_linear_layer(b.output.dense, keep, dim=0)
        b.attention.pruned_heads = set()  # the kept heads are now a layer of per_layer heads
    hf.pooler = None  # unused by sentence embeddings; its 384x384 matrix would not reload
    hf.config.update({"hidden_size": width, "num_attention_heads": per_layer, "pruned_heads": {}})
    model[1].embedding_dimension = model[1].pooling_output_dimension = width


def pruned_student(params, student: Path, keep: float, heads: int, width: int | None, corpus: list[str],
                   targets: np.ndarray, val, recovery_sentences: int | None, narrow_lr: float,
                   narrow_loss: str = "sim"):
    """The distilled student pruned to (``keep``, ``heads``[, ``width``]), then recovered."""
    p = params.prune
    model = load_sentence_model(student)
    sample = corpus[: p.importance_sentences]
    prune_model(model, sample, keep, heads)
    cfg = recovery_config(p, params.base.seed)
    if width is not None:
        narrow_hidden(model, sample, width)
        cfg = dataclasses.replace(cfg, loss=narrow_loss, lr=narrow_lr)
    n = min(len(corpus), recovery_sentences or p.recovery_max_sentences)
    train_student(model, corpus[:n], targets[:n], cfg, val[:200])
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", nargs="+", default=["0.5:0", "0.25:0", "0.75:6", "0.75:12"],
                    help="FFN_KEEP_RATIO:HEADS_TO_PRUNE pairs")
    ap.add_argument("--recovery-sentences", type=int, default=None,
                    help="recovery distillation sentences (default: prune.recovery_max_sentences)")
    ap.add_argument("--student", type=Path, default=config.DISTILL_DIR,
                    help="the distilled student every point starts from (default: the distill stage's)")
    ap.add_argument("--narrow-lr", type=float, default=1e-4, help="recovery lr of KEEP:wWIDTH points")
    ap.add_argument("--narrow-loss", choices=("sim", "kl"), default="sim",
                    help="recovery loss of KEEP:wWIDTH points (structure losses: no projection needed)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--out", type=Path, default=config.REPORTS_DIR / "bench" / "prune_sweep")
    args = ap.parse_args()
    params = load_params(sections=("base", "prune"))
    threads = params.base.threads
    pin_threads(threads)
    corpus = read_lines(config.PREPARED_DIR / "corpus.txt")
    targets = np.load(config.TEACHER_EMBED_DIR / "embeddings.npy")
    val = read_sts_tsv(config.PREPARED_DIR / "sts_val.tsv")
    teacher_val = read_json(config.METRICS_DIR / "teacher_embed.json")["teacher_val_spearman"]

    models = {"unpruned (distill)": load_sentence_model(args.student),
              "pipeline prune (models/prune)": load_sentence_model(config.PRUNE_DIR)}
    for text in args.points:
        keep, heads, width = point(text)
        print(f"pruning: ffn_keep_ratio {keep}, heads_to_prune {heads}, hidden {width or 'kept'}", flush=True)
        name = f"ffn {keep}, hidden {width}" if width else f"ffn {keep}, -{heads} heads"
        models[name] = pruned_student(params, args.student, keep, heads, width, corpus, targets, val,
                                      args.recovery_sentences, args.narrow_lr, args.narrow_loss)

    rows, embedders = {}, {}
    with tempfile.TemporaryDirectory(prefix="prune_sweep_") as tmp:
        for i, (name, model) in enumerate(models.items()):
            st_dir = Path(tmp) / f"m{i}"
            model.save(str(st_dir))
            bundle = build_simple_bundle(model, st_dir, Path(tmp) / f"b{i}", params.base.max_seq_length)
            emb = Embedder(bundle, variant="onnx_int8", threads=threads, batch_size=32,
                           max_seq_length=params.base.max_seq_length)
            embedders[name] = emb
            torch_val = sts_spearman(lambda s, m=model: m.encode(list(s), batch_size=64), val)
            int8_val = sts_spearman(lambda s, e=emb: e.embed(list(s)), val)
            cfg = hf_model(model).config
            rows[name] = {"hidden": cfg.hidden_size, "ffn": cfg.intermediate_size,
                          "heads": cfg.num_hidden_layers * cfg.num_attention_heads
                          - sum(len(v) for v in (cfg.pruned_heads or {}).values()),
                          "params": count_params(model), "val_spearman": round(torch_val, 4),
                          "val_retention": round(retention(torch_val, teacher_val), 5),
                          "int8_val_retention": round(retention(int8_val, teacher_val), 5)}
        sentences = unique_sentences(val)
        parts = [sentences[i:i + 500] for i in range(0, len(sentences), 500)]
        for emb in embedders.values():
            emb.embed(parts[0][:64])  # warm-up
        seconds = interleaved({n: e.embed for n, e in embedders.items()}, parts, args.repeats)
    for name, s in seconds.items():
        rounds = s.sum(axis=1)  # seconds of each round over every part
        rows[name]["int8_sps"] = round(len(sentences) / float(np.median(rounds)), 1)
        # (slowest - fastest) / median round: the measured noise of this run
        rows[name]["int8_spread"] = round(float(np.ptp(rounds) / np.median(rounds)), 3)
    ref = rows["unpruned (distill)"]["int8_sps"]
    for r in rows.values():
        r["speedup_vs_unpruned"] = round(r["int8_sps"] / ref, 3)

    head = (f"Prune sweep: {cpu_name()}, {threads} threads, {len(sentences)} val sentences, "
            f"{args.repeats} interleaved rounds (int8 ONNX, embopt runtime, batch 32)\n\n"
            "| model | hidden | FFN/layer | heads | params | val retention (torch) | val retention (int8) "
            "| int8 sent/s (spread of rounds) | × unpruned |\n|---|" + "---:|" * 8 + "\n")
    table = head + "".join(
        f"| {n} | {r['hidden']} | {r['ffn']} | {r['heads']} | {r['params'] / 1e6:.2f}M "
        f"| {100 * r['val_retention']:.1f}% "
        f"| {100 * r['int8_val_retention']:.1f}% | {r['int8_sps']:.0f} ({100 * r['int8_spread']:.0f}%) "
        f"| {r['speedup_vs_unpruned']:.2f}x |\n" for n, r in rows.items())
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), {"cpu": cpu_name(), "threads": threads, "rows": rows,
                                               "repeats": args.repeats, "sentences": len(sentences)})
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
