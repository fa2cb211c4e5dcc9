"""The identifier tokeniser: how text is cut and normalised before the identifier scan.

Pure (no keys, no files): the keyed index of the vault's identifier values is built and
read by ``sandbox.identifier_index``, beside the vault, and hashes the same normal forms.
Keeping the two apart lets the airlock scan exports without loading the key store.

Normalisation (``normalise``): Unicode NFKC, case folding, then every character that is
not a letter or digit is dropped, so "AB 12-34", "ab1234" and "ＡＢ１２３４" are one value.
Text is cut into pieces (runs of digits, of a-z, of other letters); every run of adjacent
pieces is a candidate, as is the whole normalised cell, so "name: AB 12-34",
"+86 138 1234 5678" and "3 5 0 2 0 3 ..." are found. Only candidates of a length some
indexed value has are hashed (the index file records which lengths occur). Digits glued to
other digits ("8613812345678") are another number and are not found. Inside a longer run of
Chinese (or other non-Latin) letters, where words are not separated, every substring of
2-4 letters is a weaker candidate (a name inside a sentence); its hits ask for review
instead of blocking, since short names are also ordinary words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterator

MAX_CANDIDATE = 64
NGRAMS = (2, 3, 4)
ALL_LENGTHS = frozenset(range(1, MAX_CANDIDATE + 1))
_STRIP = re.compile(r"[\W_]+")
_PIECES = re.compile(r"\d+|[a-z]+|[^\W\d_a-z]+")


# -- normalising and tokenising ------------------------------------------------------------
def _fold(text: str) -> str:
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def normalise(text: str) -> str:
    """The one form identifiers are compared in: NFKC, case-folded, letters and digits only."""
    folded = _fold(text)
    return folded if folded.isalnum() else _STRIP.sub("", folded)


def indexable(norm: str) -> bool:
    """Long enough to mean something: >= 6 digits, >= 4 Latin characters, or >= 2 letters
    of other scripts (Chinese names). Shorter values would match ordinary numbers and words."""
    if not norm or len(norm) > MAX_CANDIDATE:
        return False
    if norm.isascii():
        return len(norm) >= (6 if norm.isdigit() else 4)
    return len(norm) >= 2


def cell_text(value: object) -> str | None:
    """How a cell is written out: integral floats as integers (a phone stored as 1.38e10)."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        if value.is_integer() and abs(value) < 1e18:
            return str(int(value))
        return repr(value)
    return str(value)


def candidates(text: str, lengths: Collection[int] = ALL_LENGTHS
               ) -> Iterator[tuple[str, bool]]:
    """(candidate, strong) pairs of one cell or line, of the given lengths only; weak ones
    are substrings of long non-Latin runs. Every candidate is normalised and ``indexable``."""
    longest = max(lengths, default=0)
    folded = _fold(text)
    whole = folded if folded.isalnum() else _STRIP.sub("", folded)
    if len(whole) in lengths and indexable(whole):
        yield whole, True
    pieces = _PIECES.findall(folded)
    for i, piece in enumerate(pieces):
        joined = ""
        for j in range(i, len(pieces)):
            joined += pieces[j]
            if len(joined) > longest:
                break
            if len(joined) in lengths and joined != whole and indexable(joined):
                yield joined, True
        if len(piece) > NGRAMS[0] and not piece.isascii() and not piece.isdigit():
            for n in NGRAMS:
                if n in lengths:
                    for k in range(len(piece) - n + 1):
                        if (sub := piece[k:k + n]) != piece:
                            yield sub, False
