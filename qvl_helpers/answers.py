"""Reading answers as the metrics compare them: text normalised the same way for English and
Chinese, and JSON answers parsed (a Markdown code fence is accepted) and compared leaf by leaf
along key paths, numbers as exact decimals (``"12.50"`` equals ``12.5``; ``"0123"`` is text, as
IDs and ZIP codes are)."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from decimal import Decimal
from typing import Any

# --------------------------------------------------------------------------- normalisation

_TRAILING_STOPS = ".。"


def normalise_text(text: str) -> str:
    """The form that normalised exact match compares: Unicode NFKC (full-width letters, digits and
    punctuation become half-width), case folded, runs of whitespace as one space, no trailing
    full stop (``.`` or ``。``)."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.rstrip(_TRAILING_STOPS).rstrip()


def is_cjk(char: str) -> bool:
    """Whether a character is a CJK ideograph (Chinese characters, kana excluded)."""
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" or \
        "\uf900" <= char <= "\ufaff"


def tokens_for_overlap(text: str) -> list[str]:
    """Words for space-separated text, single characters for CJK ideographs, punctuation dropped:
    the units ROUGE-L counts."""
    return re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3400-\u9fff]+",
                      normalise_text(text))


# --------------------------------------------------------------------------- JSON answers

def parse_json_answer(text: str) -> tuple[Any, str | None]:
    """``(value, how)``: how is ``"json"``, ``"fenced"`` (inside a Markdown code fence, as chat
    models like to answer) or ``None`` when the text is not JSON (then value is None)."""
    text = text.strip()
    how = "json"
    fence = re.fullmatch(r"```[A-Za-z]*\s*\n?(.*?)\n?\s*```", text, flags=re.DOTALL)
    if fence:
        text, how = fence.group(1).strip(), "fenced"
    try:
        return json.loads(text), how
    except (ValueError, RecursionError):
        return None, None


def flatten_json(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by key path: ``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c[0]": 2}``. An empty
    object or list is a leaf of its own."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten_json(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, item in enumerate(value):
            out.update(flatten_json(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


_NUMBER = re.compile(r"[+-]?(0|[1-9]\d*|[1-9]\d{0,2}(,\d{3})+)(\.\d+)?|[+-]?\.\d+")


def as_number(value: Any) -> Decimal | None:
    """A JSON number, or a string that is one (``"12.50"``, ``"1,234.5"``), as an exact decimal.
    Text with leading zeros (``"0123"``: an ID, a ZIP code) is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        text = unicodedata.normalize("NFKC", value).strip()
        if _NUMBER.fullmatch(text):
            return Decimal(text.replace(",", ""))
    return None


def values_equal(prediction: Any, reference: Any) -> bool:
    """Leaf (or subtree) equality: numbers as numbers, text after :func:`normalise_text`."""
    if isinstance(reference, dict) or isinstance(prediction, dict):
        return isinstance(reference, dict) and isinstance(prediction, dict) and \
            reference.keys() == prediction.keys() and \
            all(values_equal(prediction[k], reference[k]) for k in reference)
    if isinstance(reference, list) or isinstance(prediction, list):
        return isinstance(reference, list) and isinstance(prediction, list) and \
            len(reference) == len(prediction) and \
            all(values_equal(p, r) for p, r in zip(prediction, reference, strict=True))
    a, b = as_number(prediction), as_number(reference)
    if a is not None and b is not None:
        return a == b  # exact: 4155550123 is not 4155550124
    if isinstance(reference, str) and isinstance(prediction, str):
        return normalise_text(prediction) == normalise_text(reference)
    return type(prediction) is type(reference) and prediction == reference
