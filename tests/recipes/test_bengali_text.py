"""The Bengali transcript normaliser on real Bengali text."""

from __future__ import annotations

import unicodedata

import pytest

from speechae.text.bengali import NormalizationError, normalize_bengali


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


@pytest.mark.parametrize("raw, expected", [
    # danda and comma removed, spaces collapsed (national anthem, first line)
    ("আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।", "আমার সোনার বাংলা আমি তোমায় ভালোবাসি"),
    # double danda, U+09F7 and ASCII '|' used as danda
    ("প্রথম বাক্য॥ দ্বিতীয় বাক্য৷ তৃতীয় বাক্য|", "প্রথম বাক্য দ্বিতীয় বাক্য তৃতীয় বাক্য"),
    # quotes, question/exclamation marks, em dash, ellipsis, hyphen
    ("“কেমন আছ?” সে বলল—“ভালো!”…", "কেমন আছ সে বলল ভালো"),
    ("মা-বাবা", "মা বাবা"),
    # ZWJ in the র‍্য ligature and ZWNJ are dropped
    ("র\u200d্যাব ও ক্\u200cষ", "র্যাব ও ক্ষ"),
    # legacy khanda ta (ত + hasanta + ZWJ) becomes ৎ
    ("উত্\u200dসব", "উৎসব"),
    # decomposed vowel sign  ে + া composes to ো; precomposed য় (U+09DF) and ড় are normalised by NFC
    ("কে\u09be\u09a5\u09be\u09df", nfc("কোথায়")),
    ("প\u09dc\u09be", nfc("পড়া")),
    # অ + া typed for আ
    ("অামি", "আমি"),
    # English words are lower-cased, NBSP and tabs collapse
    ("আমি Google\u00a0ব্যবহার\tকরি", "আমি google ব্যবহার করি"),
])
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_bengali(raw) == expected
    assert normalize_bengali(normalize_bengali(raw)) == normalize_bengali(raw)  # idempotent


def test_same_word_from_different_encodings() -> None:
    precomposed = "য\u09bc"  # য + nukta
    assert normalize_bengali("\u09df") == normalize_bengali(precomposed)
    assert normalize_bengali("বো") == normalize_bengali("বে\u09be")


def test_digits() -> None:
    assert normalize_bengali("১৯৭১ সালে 2024") == "১৯৭১ সালে ২০২৪"
    assert normalize_bengali("ফোন ০১৭", digits="spell") == "ফোন শূন্য এক সাত"
    with pytest.raises(NormalizationError, match="digits"):
        normalize_bengali("৳৫০০ টাকা", digits="reject")


def test_empty_after_normalisation() -> None:
    with pytest.raises(NormalizationError, match="empty"):
        normalize_bengali(" ।, \u200d ")
