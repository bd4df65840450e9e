"""Tiny, deterministic fixtures built locally: a BERT from a config, a WordPiece
tokenizer from a word list, STS pairs and a corpus. No downloads."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

SUBJECTS = [
    "a man",
    "a woman",
    "the child",
    "a dog",
    "the cat",
    "an old man",
    "a young girl",
    "the chef",
    "a musician",
    "the teacher",
]
VERBS = [
    "is playing",
    "is eating",
    "is cutting",
    "is watching",
    "is holding",
    "is riding",
    "is cleaning",
    "is painting",
]
OBJECTS = [
    "a guitar",
    "an apple",
    "the bread",
    "a horse",
    "the piano",
    "a bicycle",
    "the window",
    "a ball",
    "the fence",
    "a flute",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS))
    rng.shuffle(combos)
    return [f"{s.capitalize()} {v} {o}." for s, v, o in combos[:n]]


def sts_rows(n: int, seed: int) -> list[tuple[float, str, str]]:
    """Pairs whose gold score is the number of shared slots (subject, verb, object) x 5/3."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        b = [
            x if rng.random() < 0.5 else rng.choice(pool)
            for x, pool in zip(a, (SUBJECTS, VERBS, OBJECTS), strict=True)
        ]
        score = 5.0 * sum(x == y for x, y in zip(a, b, strict=True)) / 3.0
        rows.append((score, f"{a[0].capitalize()} {a[1]} {a[2]}.", f"{b[0].capitalize()} {b[1]} {b[2]}."))
    return rows


def write_sts_dir(folder: Path, n_train: int = 100, n_dev: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("dev", n_dev, 2)):
        with open(folder / f"sts-{split}.csv", "w", encoding="utf-8") as fh:
            for i, (score, s1, s2) in enumerate(sts_rows(n, seed)):
                fh.write(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score:.3f}\t{s1}\t{s2}\n")
    return folder


def write_corpus(path: Path, n: int = 300) -> Path:
    """A WikiExtractor-style file: <doc> blocks, title lines, paragraphs of several sentences."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sents = sentences(n, seed=3)
    with open(path, "w", encoding="utf-8") as fh:
        for d in range(0, n, 30):
            fh.write(f'<doc id="{d}" url="https://example.org/{d}" title="Doc {d}">\nDoc {d}\n\n')
            for p in range(d, min(d + 30, n), 3):
                fh.write(" ".join(sents[p : p + 3]) + "\n\n")
            fh.write("</doc>\n")
    return path


def vocab() -> list[str]:
    words = set()
    for phrase in SUBJECTS + VERBS + OBJECTS:
        words.update(phrase.split())
        words.update(w.capitalize() for w in phrase.split())
    words.update([".", ",", "doc", "Doc", "the", "is"])
    return SPECIAL + sorted(words) + [str(i) for i in range(10)]


def build_tiny_model(
    folder: Path, layers: int = 4, hidden: int = 32, heads: int = 4, intermediate: int = 64
) -> Path:
    """A SentenceTransformer (BERT -> mean pooling -> normalize) with random weights, saved at ``folder``."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    hf_dir = folder.parent / f"{folder.name}_hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    (hf_dir / "vocab.txt").write_text("\n".join(vocab()) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(hf_dir / "vocab.txt"), do_lower_case=False, model_max_length=64)
    tok.save_pretrained(str(hf_dir))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(str(hf_dir))
    transformer = models.Transformer(str(hf_dir), max_seq_length=32)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    st.save(str(folder))
    return folder


MPNET_SPECIAL = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]  # ids 0..4: bos, pad (MPNet's padding_idx 1), eos


def build_tiny_mpnet(
    folder: Path, layers: int = 4, hidden: int = 32, heads: int = 4, intermediate: int = 64
) -> Path:
    """A SentenceTransformer (MPNet -> mean pooling -> normalize), all-mpnet-base-v2's shape at toy size."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    folder = Path(folder)
    hf_dir = folder.parent / f"{folder.name}_hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    words = MPNET_SPECIAL + vocab()[len(SPECIAL):]
    (hf_dir / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = MPNetTokenizerFast(vocab_file=str(hf_dir / "vocab.txt"), do_lower_case=False, model_max_length=64)
    tok.save_pretrained(str(hf_dir))
    torch.manual_seed(0)
    cfg = MPNetConfig(
        vocab_size=len(words),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=66,  # positions start after padding_idx (1), as in all-mpnet-base-v2 (514)
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    MPNetModel(cfg).save_pretrained(str(hf_dir))
    transformer = models.Transformer(str(hf_dir), max_seq_length=32)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    st.save(str(folder))
    return folder


REPO = Path(__file__).resolve().parents[1]


def make_pipeline_repo(root: Path) -> tuple[Path, dict[str, str]]:
    """A temporary git + DVC copy of this repo on the tiny profile, and the env to run it.

    The fixtures (model, STS, corpus) go to ``root/fixtures``; the MLflow store to
    ``root/mlflow.db``, so a test never touches the developer's store.
    """
    import os
    import shutil
    import subprocess
    import sys

    fixtures = root / "fixtures"
    build_tiny_model(fixtures / "model")
    write_sts_dir(fixtures / "sts")
    write_corpus(fixtures / "corpus" / "wiki_00")
    repo = root / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, repo / name)
    for name in ("stages", "src"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    text = (REPO / "tests" / "profiles" / "params.tiny.yaml").read_text().replace("@FIXTURES@", str(fixtures))
    (repo / "params.yaml").write_text(text)
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "EMBOPT_ROOT": str(repo),
        "PYTHONPATH": f"{repo / 'src'}{os.pathsep}{repo}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return repo, env
