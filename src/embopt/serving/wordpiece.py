"""BERT WordPiece tokenization with a word cache: the Rust tokenizer's ids, in a third of the time.

For the short sentences embopt serves, the Rust tokenizer costs more than a static model's whole
forward pass: per text it builds an ``Encoding`` (tokens, type ids, masks, word ids) and moves
it into Python. For printable ASCII text a BERT tokenizer is simple: its normaliser lower-cases
(accents and CJK do not occur), its pre-tokenizer splits on whitespace and ASCII punctuation, and
the WordPiece ids of each word depend on that word alone. So each word's ids are looked up (a
whole-word vocabulary entry) or computed once by the Rust tokenizer and cached. Every other text
(non-ASCII, control characters, a special token written out) goes to the Rust tokenizer as
before, so the ids are always the Rust tokenizer's (tests compare them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

# BERT's punctuation in ASCII: every printable character that is neither a letter, a digit nor a space.
_PUNCT = re.escape("".join(chr(c) for c in range(33, 127) if not chr(c).isalnum()))
_WORDS = re.compile(rf"[{_PUNCT}]|[^\s{_PUNCT}]+")
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # removed by BERT's normaliser: words join across them
MAX_CACHED_WORDS = 1 << 17  # out-of-vocabulary words kept (a few MB); the cache restarts when full


class CachedWordPiece:
    """``encode(texts) -> ids per text`` for a BERT WordPiece ``tokenizers.Tokenizer``, or ``None``
    from :meth:`for_tokenizer` when the tokenizer is not one (then use it directly)."""

    def __init__(self, tokenizer, lowercase: bool):
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        # A whole word that is a vocabulary entry is that one token (WordPiece matches longest first).
        self.vocab = {w: [i] for w, i in tokenizer.get_vocab().items() if not w.startswith("##")}
        self.words = dict(self.vocab)
        # Texts the Rust tokenizer must see: control characters, or a special token written out
        # ("[MASK]", which it matches whole; compared lower-cased: a superset of what it matches).
        special = [t.content.lower() if lowercase else t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self.slow = re.compile("|".join([_CONTROL] + [re.escape(s) for s in special]))
        full, bare = tokenizer.encode("a").ids, tokenizer.encode("a", add_special_tokens=False).ids
        at = next(i for i in range(len(full)) if full[i: i + len(bare)] == bare)
        self.prefix, self.suffix = full[:at], full[at + len(bare):]

    @classmethod
    def for_tokenizer(cls, tokenizer) -> CachedWordPiece | None:
        spec = json.loads(tokenizer.to_str())
        norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        if (norm.get("type"), pre.get("type"), model.get("type")) != ("BertNormalizer", "BertPreTokenizer",
                                                                      "WordPiece"):
            return None
        if not norm.get("clean_text", True):
            return None
        return cls(tokenizer, bool(norm.get("lowercase", True)))

    def _miss(self, word: str) -> list[int]:
        if len(self.words) >= len(self.vocab) + MAX_CACHED_WORDS:
            self.words = dict(self.vocab)
        ids = self.words[word] = self.tokenizer.encode(word, add_special_tokens=False).ids
        return ids

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        # Truncation is read at each call: a caller may change it on the tokenizer (bench's sweep does).
        trunc = self.tokenizer.truncation
        if trunc and (trunc["stride"] or trunc["direction"] != "right"):
            return [e.ids for e in self.tokenizer.encode_batch_fast(list(texts))]
        # The Rust tokenizer cuts the words and keeps its special tokens within max_length.
        keep = trunc["max_length"] - len(self.suffix) if trunc else None
        out: list[list[int] | None] = []
        slow: list[int] = []
        words, miss, find, needs_rust = self.words, self._miss, _WORDS.findall, self.slow.search
        for i, text in enumerate(texts):
            norm = text.lower() if self.lowercase else text
            if not text.isascii() or needs_rust(norm):
                slow.append(i)
                out.append(None)
                continue
            ids = list(self.prefix)
            for word in find(norm):
                ids += words.get(word) or miss(word)
            if keep is not None:
                del ids[keep:]
            out.append(ids + self.suffix)
        if slow:
            encoded = self.tokenizer.encode_batch_fast([texts[i] for i in slow])
            for i, enc in zip(slow, encoded):
                out[i] = enc.ids
        return out  # type: ignore[return-value]
