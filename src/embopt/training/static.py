"""A static embedding model: one vector per token, the sentence is their normalised mean.

Two steps. :func:`distill_table` is Model2Vec's distillation (every vocabulary token through the teacher,
SIF-weighted by token rank), re-indexed by the teacher tokenizer's ids so the bundle ships the teacher's
own tokenizer. :func:`fit_table` then trains the table the way tokenlearn does: the mean of a corpus
sentence's token vectors regresses (cosine loss) onto the teacher's embedding of that sentence, which the
teacher_embed stage already wrote. The epoch kept is the one with the best validation-split Spearman.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from embopt.errors import EmboptError

log = logging.getLogger(__name__)


def distill_table(teacher_dir: str, vocab: dict[str, int], special_ids: Sequence[int]) -> np.ndarray:
    """Model2Vec vectors of the teacher's tokens as a (len(vocab), dim) table; special tokens are zero."""
    try:
        from model2vec.distill import distill_from_model
    except ImportError:
        raise EmboptError("the static stage needs `pip install model2vec[distill]`") from None
    from transformers import AutoModel, AutoTokenizer

    static = distill_from_model(AutoModel.from_pretrained(teacher_dir),
                                AutoTokenizer.from_pretrained(teacher_dir), pca_dims=None,
                                quantize_to="float32")
    emb = np.asarray(static.embedding, dtype=np.float32)
    table = np.zeros((len(vocab), emb.shape[1]), dtype=np.float32)
    # Model2Vec rebuilds the tokenizer (drops [unused*], renumbers): map its rows back by token string.
    rows = [(vocab[token], i) for token, i in static.tokenizer.get_vocab().items() if token in vocab]
    for j, i in rows:
        table[j] = emb[i]
    table[list(special_ids)] = 0.0  # [CLS]/[SEP]/[PAD] carry no meaning in a bag of tokens
    log.info("model2vec table: %d of the teacher's %d tokens matched by string", len(rows), len(vocab))
    return table


def encode_with_table(table: np.ndarray, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """L2-normalised sums of table rows (the mean's 1/n cancels), one per id list."""
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int64, count=int(lens.sum()))
    out = np.zeros((len(ids), table.shape[1]), dtype=np.float32)
    np.add.at(out, np.repeat(np.arange(len(ids)), lens), table[flat])
    out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


def fit_table(table: np.ndarray, ids: Sequence[Sequence[int]], targets: np.ndarray,
              score: Callable[[np.ndarray], float], epochs: int, batch_size: int, lr: float, seed: int,
              ) -> tuple[np.ndarray, list[float]]:
    """Train ``table`` so each sentence's mean token vector points where the teacher's embedding does.

    ``table`` is (vocab, dim); ``ids`` are each corpus sentence's token ids (no special tokens), ``targets``
    their teacher embeddings, ``score`` a table's validation Spearman (selection only); SparseAdam, so only
    rows in a batch move. Returns the table of the best-scoring epoch (epoch 0: the initial table) and every
    epoch's score.
    """
    import torch

    if len(ids) != len(targets):
        raise EmboptError(f"{len(ids)} corpus sentences but {len(targets)} teacher embeddings")
    torch.manual_seed(seed)
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(table.copy()), freeze=False, mode="sum",
                                                sparse=True)
    opt = torch.optim.SparseAdam(list(bag.parameters()), lr=lr)
    keep = [i for i, row in enumerate(ids) if row]  # a sentence of special tokens only has nothing to learn
    rows = [torch.tensor(ids[i], dtype=torch.long) for i in keep]
    y = torch.from_numpy(np.asarray(targets, dtype=np.float32)[keep])
    gen = torch.Generator().manual_seed(seed)
    history = [score(table)]
    best, best_table = history[0], table
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(rows), generator=gen).split(batch_size):
            parts = [rows[i] for i in batch.tolist()]
            offsets = torch.tensor([0] + [len(r) for r in parts[:-1]]).cumsum(0)
            pooled = bag(torch.cat(parts), offsets)
            loss = 1 - torch.nn.functional.cosine_similarity(pooled, y[batch]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        current = bag.weight.detach().numpy().copy()
        history.append(score(current))
        log.info("static epoch %d: loss %.4f, val Spearman %.2f", epoch, loss.item(), history[-1])
        if history[-1] > best:
            best, best_table = history[-1], current
    return best_table, history
