"""String kernels; string tensors are NumPy object arrays of Python str."""

from __future__ import annotations

import re

import numpy as np

from modelloader.kernels.cpu._registry import kernel


def _strings(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == object else x.astype(object)


@kernel("StringConcat")
def string_concat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ONNX StringConcat-20: elementwise concatenation with broadcasting."""
    return np.asarray(_strings(x) + _strings(y), dtype=object)


@kernel("StringNormalizer")
def string_normalizer(
    x: np.ndarray,
    *,
    case_change_action: str = "NONE",
    is_case_sensitive: int = 0,
    locale: str = "",
    stopwords: list[str] | None = None,
) -> np.ndarray:
    """ONNX StringNormalizer-10: drop stopwords, then change case, on [C] or [1, C] input.

    An all-filtered input yields a single empty string.
    """
    if x.ndim == 2 and x.shape[0] != 1 or x.ndim > 2:
        raise ValueError("StringNormalizer input must be [C] or [1, C]")
    words = [str(w) for w in x.reshape(-1).tolist()]
    if stopwords:
        if is_case_sensitive:
            stops = set(stopwords)
            words = [w for w in words if w not in stops]
        else:
            stops = {s.casefold() for s in stopwords}
            words = [w for w in words if w.casefold() not in stops]
    if case_change_action == "LOWER":
        words = [w.lower() for w in words]
    elif case_change_action == "UPPER":
        words = [w.upper() for w in words]
    elif case_change_action != "NONE":
        raise ValueError(f"StringNormalizer: unknown case_change_action {case_change_action!r}")
    if not words:
        words = [""]
    out = np.empty(len(words), dtype=object)
    out[:] = words
    return out.reshape(1, -1) if x.ndim == 2 else out


@kernel("StringSplit")
def string_split(
    x: np.ndarray, *, delimiter: str | None = None, maxsplit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX StringSplit-20: (Y padded with "" to the max split count, Z counts as int64).

    An empty/absent delimiter splits on runs of whitespace, dropping leading/trailing space.
    """
    sep = delimiter or None
    limit = -1 if maxsplit is None else maxsplit
    parts = [str(s).split(sep, limit) for s in x.reshape(-1).tolist()]
    if sep is None:
        parts = [p if p != [""] else [] for p in parts]
    counts = np.asarray([len(p) for p in parts], dtype=np.int64).reshape(x.shape)
    width = int(counts.max()) if counts.size else 0
    y = np.full((len(parts), width), "", dtype=object)
    for i, p in enumerate(parts):
        y[i, : len(p)] = p
    return y.reshape(*x.shape, width), counts


@kernel("RegexFullMatch")
def regex_full_match(x: np.ndarray, *, pattern: str) -> np.ndarray:
    """ONNX RegexFullMatch-20: whether each string fully matches ``pattern`` (Python re as RE2)."""
    rx = re.compile(pattern)
    flat = [rx.fullmatch(str(s)) is not None for s in x.reshape(-1).tolist()]
    return np.asarray(flat, dtype=bool).reshape(x.shape)
