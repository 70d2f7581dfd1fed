"""Bengali transcript normalisation for ASR-style targets (CTC probes, sentencepiece).

:func:`normalize_bengali` applies, in this order:

1. **Unicode NFC.**  Canonical composition makes visually identical strings byte-identical:
   the two-part vowel signs compose (``ে`` + ``া`` -> ``ো``, ``ে`` + ``ৗ`` -> ``ৌ``) while the
   composition-excluded nukta letters decompose (``য়`` U+09DF -> ``য`` + ``়``; likewise ``ড়``,
   ``ঢ়``).  Both spellings occur in real corpora; after NFC they are one token sequence.
2. **Legacy spellings.**  ``ত`` + ``্`` + ZWJ (the pre-Unicode-4.1 khanda ta) -> ``ৎ``;
   ``অ`` + ``া`` (a common typing error) -> ``আ``.
3. **Invisible characters.**  ZWJ (U+200D) and ZWNJ (U+200C) only select glyph shapes (e.g. the
   ``র‍্য`` ligature); they change no sound and corpora use them inconsistently, so they are
   removed, as are ZWSP (U+200B), the BOM (U+FEFF) and soft hyphens.
4. **Punctuation.**  Danda ``।`` (U+0964), double danda ``॥`` (U+0965), their frequent stand-ins
   ``৷`` (U+09F7, a currency numerator misused as danda) and ``|``, and every other Unicode
   punctuation or symbol character (``, ? ! " ' - — … ৳`` ...) become a space.
   The Bengali abbreviation sign and the nukta/virama/anusvara/visarga/candrabindu are letters
   (marks), not punctuation, and are kept.
5. **Digits** (``digits=``):

   * ``"keep"`` (default): ASCII ``0-9`` are mapped to Bengali ``০-৯`` so the tokenizer sees
     one digit set;
   * ``"spell"``: each digit becomes its Bengali word (``২০২৪`` -> ``দুই শূন্য দুই চার``).  This
     is right for phone numbers and codes but not for cardinals; full number verbalisation is
     not implemented because Bengali numbers 1-99 are irregular words;
   * ``"reject"``: a transcript that contains a digit raises :class:`NormalizationError`, so the
     manifest stage skips (or fails on) it: the cleanest choice when audio read numbers aloud
     in unknown ways.
6. **Latin letters** (English words in code-switched text) are lower-cased.
7. **Whitespace** runs (including NBSP and other Unicode spaces) collapse to one ASCII space;
   the result is stripped.  An empty result raises :class:`NormalizationError`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

DigitMode = Literal["keep", "spell", "reject"]

BENGALI_DIGITS = "০১২৩৪৫৬৭৮৯"
DIGIT_WORDS = ("শূন্য", "এক", "দুই", "তিন", "চার", "পাঁচ", "ছয়", "সাত", "আট", "নয়")

_ZWJ, _ZWNJ = "\u200d", "\u200c"
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_DANDA_LIKE = "\u0964\u0965\u09f7|"
_ASCII_TO_BN = str.maketrans("0123456789", BENGALI_DIGITS)
_ALL_DIGITS = re.compile(r"[0-9০-৯]")
_SPACE = re.compile(r"\s+")
# Bengali characters that Unicode files under punctuation/symbol categories but that are
# spelling, not punctuation: none needed today; listed here so an addition is one edit.
_KEEP_SYMBOLS: frozenset[str] = frozenset()


class NormalizationError(ValueError):
    """The transcript cannot be used (empty after normalisation, or digits with ``reject``)."""


def _is_punct_or_symbol(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return (cat[0] in "PS" or ch in _DANDA_LIKE) and ch not in _KEEP_SYMBOLS


def normalize_bengali(text: str, digits: DigitMode = "keep") -> str:
    """Normalise one Bengali transcript (see the module docstring for the exact rules).

    Raises :class:`NormalizationError` when nothing is left, or on a digit with ``digits="reject"``.
    """
    if digits not in ("keep", "spell", "reject"):
        raise ValueError(f"digits must be keep|spell|reject, not {digits!r}")
    s = unicodedata.normalize("NFC", text)
    s = s.replace("ত্" + _ZWJ, "ৎ").replace("অা", "আ")
    s = s.translate(_INVISIBLE)
    s = "".join(" " if _is_punct_or_symbol(ch) else ch for ch in s)
    s = s.translate(_ASCII_TO_BN)
    if _ALL_DIGITS.search(s):
        if digits == "reject":
            raise NormalizationError(f"transcript contains digits: {text!r}")
        if digits == "spell":
            s = "".join(f" {DIGIT_WORDS[BENGALI_DIGITS.index(ch)]} " if ch in BENGALI_DIGITS else ch for ch in s)
    s = "".join(ch.lower() if "A" <= ch <= "Z" else ch for ch in s)
    s = _SPACE.sub(" ", s).strip()
    if not s:
        raise NormalizationError(f"transcript is empty after normalisation: {text!r}")
    # A final NFC: removing ZWJ/ZWNJ can place a vowel sign next to its pair again.
    return unicodedata.normalize("NFC", s)
