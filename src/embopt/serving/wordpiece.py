"""BERT WordPiece tokenization with a chunk cache: the Rust tokenizer's ids, in a fifth of the time.

For the short sentences embopt serves, the Rust tokenizer costs more than a static model's whole
forward pass: per text it builds an ``Encoding`` (tokens, type ids, masks, word ids) and moves it
into Python. For printable ASCII text a BERT tokenizer is simple: it lower-cases (no accents or
CJK), splits on whitespace, then on ASCII punctuation, so the ids of each whitespace-separated
chunk ("off.", "don't") depend on that chunk alone. A text is split with ``str.split`` (in C: a
regular expression splitting off the punctuation too took twice the time), and each chunk's ids are
looked up (a whole-word vocabulary entry) or computed once from its words and punctuation marks (a
new word by the Rust tokenizer) and cached. Every other text (non-ASCII, control characters, a
special token written out) goes to the Rust tokenizer, so the ids are always its ids (tests compare).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import chain

_PUNCT = {chr(c) for c in range(33, 127) if not chr(c).isalnum()}  # BERT's punctuation in ASCII
_P = re.escape("".join(sorted(_PUNCT)))
_PIECES = re.compile(f"[{_P}]|[^{_P}]+").findall  # a chunk's words and punctuation marks
# Removed by BERT's normaliser, so words join across them: the Rust tokenizer's job.
_CONTROL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
MAX_CACHED_CHUNKS = 1 << 17  # chunks kept beyond the vocabulary (a few MB); the cache restarts when full


class _Chunks(dict):
    """Chunk -> WordPiece ids. A new chunk is its words and punctuation marks, each looked up in
    turn; a new word is asked of the Rust tokenizer (without truncation) once."""

    def __init__(self, seed: dict[str, list[int]], tokenizer):
        super().__init__(seed)
        self.seed, self.tokenizer = seed, tokenizer

    def __missing__(self, chunk: str) -> list[int]:
        if len(self) >= len(self.seed) + MAX_CACHED_CHUNKS:
            self.clear()
            self.update(self.seed)
        pieces = _PIECES(chunk)
        ids = self[chunk] = (list(chain.from_iterable(map(self.__getitem__, pieces))) if len(pieces) > 1
                             else self.tokenizer.encode(chunk, add_special_tokens=False).ids)
        return ids


class CachedWordPiece:
    """``encode(texts) -> ids per text`` for a BERT WordPiece ``tokenizers.Tokenizer``, or ``None``
    from :meth:`for_tokenizer` when the tokenizer is not one (then use it directly)."""

    def __init__(self, tokenizer, lowercase: bool):
        from tokenizers import Tokenizer

        self.tokenizer, self.lowercase = tokenizer, lowercase
        # Misses are tokenized whole: the caller's tokenizer may truncate (a chunk's ids must not be).
        whole = Tokenizer.from_str(tokenizer.to_str())
        whole.no_truncation()
        whole.no_padding()
        # A vocabulary entry is a chunk's one token when WordPiece reaches it whole: a word without
        # punctuation ("..." is an entry, but the pre-tokenizer splits it into three ".").
        seed = {w: [i] for w, i in tokenizer.get_vocab().items()
                if not w.startswith("##") and (len(w) == 1 or not _PUNCT.intersection(w))}
        self.words = _Chunks(seed, whole)
        # Special tokens written out ("[MASK]") are matched whole by the Rust tokenizer; compared
        # lower-cased: a superset of what it matches.
        self.special = [t.content.lower() if lowercase else t.content
                        for t in tokenizer.get_added_tokens_decoder().values()]
        # One character-class scan finds the texts that may need the Rust tokenizer ("[" of "[MASK]":
        # rare); only those are looked at closely (an alternation of the tokens costs 4 us a text).
        firsts = re.escape("".join({s[0] for s in self.special if s}))
        self.suspect = re.compile(f"[{_CONTROL}{firsts}]").search
        self.control = re.compile(f"[{_CONTROL}]").search
        full, bare = tokenizer.encode("a").ids, tokenizer.encode("a", add_special_tokens=False).ids
        at = next(i for i in range(len(full)) if full[i: i + len(bare)] == bare)
        self.prefix, self.suffix = full[:at], full[at + len(bare):]

    @classmethod
    def for_tokenizer(cls, tokenizer) -> CachedWordPiece | None:
        spec = json.loads(tokenizer.to_str())
        norm = spec.get("normalizer") or {}
        kinds = tuple((spec.get(part) or {}).get("type") for part in ("normalizer", "pre_tokenizer", "model"))
        if kinds != ("BertNormalizer", "BertPreTokenizer", "WordPiece") or not norm.get("clean_text", True):
            return None
        return cls(tokenizer, bool(norm.get("lowercase", True)))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids per text, as the Rust tokenizer gives them."""
        # Truncation is read at each call: a caller may change it on the tokenizer (bench's sweep does).
        trunc = self.tokenizer.truncation
        if trunc and (trunc["stride"] or trunc["direction"] != "right"):
            return [e.ids for e in self.tokenizer.encode_batch_fast(list(texts))]
        # The Rust tokenizer cuts the words and keeps its special tokens within max_length.
        keep = trunc["max_length"] - len(self.suffix) if trunc else None
        out: list[list[int] | None] = []
        slow = []
        chunk_ids, suspect, prefix, suffix = self.words.__getitem__, self.suspect, self.prefix, self.suffix
        for i, text in enumerate(texts):
            norm = text.lower() if self.lowercase else text
            # text, not norm: lower() maps some non-ASCII letters to ASCII (the Kelvin sign to "k").
            if not text.isascii() or (suspect(norm) and (self.control(norm) is not None
                                                         or any(s in norm for s in self.special))):
                slow.append(i)
                out.append(None)
                continue
            ids = prefix + list(chain.from_iterable(map(chunk_ids, norm.split())))
            if keep is not None:
                del ids[keep:]
            out.append(ids + suffix)
        if slow:  # most batches have none: no call into the Rust tokenizer on the hot path
            for i, enc in zip(slow, self.tokenizer.encode_batch_fast([texts[i] for i in slow]), strict=True):
                out[i] = enc.ids
        return out  # type: ignore[return-value]
