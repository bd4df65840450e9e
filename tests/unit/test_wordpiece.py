"""The chunk cache gives the Rust tokenizer's ids, text by text, whatever the text."""

from __future__ import annotations

import pytest
import tiny
from tokenizers import Tokenizer

from embopt.serving import wordpiece
from embopt.serving.wordpiece import CachedWordPiece

TEXTS = tiny.sentences(200, seed=3) + [
    "",
    "   leading and trailing   spaces  ",
    "The CAT sat, on the mat... (twice)!",
    "unknownword and doc's #hash ##tag: 3.14 / 42%",
    "x" * 150,  # over WordPiece's 100 characters a word: [UNK]
    "tab\tnew\nline\rreturn",
    "vertical\x0btab joins words",  # a control character: removed, not split on
    "the [MASK] is here",
    "the [mask] is here",
    "Café, naïve résumé",  # not ASCII: the Rust tokenizer
    "\u212a kelvin",  # the Kelvin sign: not ASCII, though lower-cased it is "k"
    "doc " * 100,  # truncated
    "wait ... what?!",  # "..." is a vocabulary entry, but the pre-tokenizer splits it
    "(see http://example.com/a/b/c/d/e/f/g/h)",  # one chunk of more ids than a short truncation keeps
    "nul\x00inside",  # a control character: the Rust tokenizer
]


def _tokenizer(tmp_path, lowercase: bool, max_length: int | None = 32) -> Tokenizer:
    from transformers import BertTokenizerFast

    vocab = tiny.vocab() + ["##s", "##ing", "un", "..."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    hf = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=lowercase)
    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.no_padding()
    if max_length:
        tok.enable_truncation(max_length=max_length)
    return tok


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("max_length", [32, None])
def test_ids_equal_the_rust_tokenizer(tmp_path, lowercase, max_length):
    tok = _tokenizer(tmp_path, lowercase, max_length)
    cached = CachedWordPiece.for_tokenizer(tok)
    want = [e.ids for e in tok.encode_batch(TEXTS)]
    assert cached.encode(TEXTS) == want
    assert cached.encode(TEXTS) == want  # second pass: every chunk from the cache
    assert cached.encode([]) == []


def test_truncation_changed_after_creation_is_followed(tmp_path):
    """`embopt bench`'s truncation sweep sets it on the Embedder's tokenizer between calls."""
    tok = _tokenizer(tmp_path, lowercase=True, max_length=32)
    cached = CachedWordPiece.for_tokenizer(tok)
    for setting in (8, 64, None, ("stride", 16, 2), ("left", 16)):
        if setting is None:
            tok.no_truncation()
        elif isinstance(setting, tuple) and setting[0] == "stride":
            tok.enable_truncation(max_length=setting[1], stride=setting[2])
        elif isinstance(setting, tuple):
            tok.enable_truncation(max_length=setting[1], direction="left")
        else:
            tok.enable_truncation(max_length=setting)
        assert cached.encode(TEXTS) == [e.ids for e in tok.encode_batch(TEXTS)], setting


def test_cache_restarts_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(wordpiece, "MAX_CACHED_CHUNKS", 3)
    tok = _tokenizer(tmp_path, lowercase=True)
    cached = CachedWordPiece.for_tokenizer(tok)
    texts = ["alpha beta gamma delta epsilon zeta", "eta theta alpha"]
    assert cached.encode(texts) == [e.ids for e in tok.encode_batch(texts)]
    assert len(cached.words) <= len(cached.words.seed) + 3


def test_other_tokenizers_are_left_alone():
    from tokenizers import models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert CachedWordPiece.for_tokenizer(tok) is None


def test_mpnet_special_tokens(tmp_path):
    """MPNet's tokenizer is BERT's with <s> ... </s> around the words."""
    tiny.build_tiny_mpnet(tmp_path / "mpnet")
    tok = Tokenizer.from_file(str(tmp_path / "mpnet_hf" / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=16)
    cached = CachedWordPiece.for_tokenizer(tok)
    assert cached is not None and cached.prefix != cached.suffix
    texts = TEXTS + ["a <mask> b", "x </s> y"]
    assert cached.encode(texts) == [e.ids for e in tok.encode_batch(texts)]
