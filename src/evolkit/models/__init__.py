"""Model backends behind one interface, and the factory that builds one per role.

Roles (evolver, responder, judge, ...) are separate settings; roles that name the same model
share one loaded instance, so a laptop never holds two copies of the same weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

# A module import, not its names: evolkit.cache imports evolkit.models.base, so whichever of
# the two is imported first, this line must not need cache's classes to exist yet.
from evolkit import cache as call_cache
from evolkit.errors import EvolkitError
from evolkit.models.base import Backend, ChatRequest, Generation, SamplingParams, Usage

if TYPE_CHECKING:
    from evolkit.models.scoring import Losses, ScoreItem

__all__ = [
    "Backend",
    "BackendFactory",
    "ChatRequest",
    "Generation",
    "ModelSpec",
    "SamplingParams",
    "Scorer",
    "ScorerSpec",
    "Usage",
]


#: Where models run: in-process transformers, an OpenAI-compatible HTTP server, in-process vLLM.
BACKENDS = ("local", "openai", "vllm")


@dataclass(frozen=True)
class ModelSpec:
    """How to reach one model: everything a worker needs to build its backend itself."""

    model: str = "embedded"
    backend: str = "local"  # one of BACKENDS
    base_url: str | None = None
    api_key: str | None = None
    batch_size: int = 16
    extra_body: str | None = None  # JSON object merged into every HTTP request body
    # HTTP only: seconds per request, and requests in flight (None: the backend's default,
    # and at least the batch size for concurrency). Runtime settings, not the model's identity.
    timeout: float | None = None
    concurrency: int | None = None
    max_consecutive_errors: int | None = None  # None: the backend's default


@dataclass(frozen=True)
class ScorerSpec:
    """The scorer role: a model that computes token losses for IFD / IC-IFD."""

    model: str = "embedded"
    backend: str = "local"
    template: str = "plain"
    max_length: int = 2048
    batch_size: int = 8  # sequences per forward pass


class Scorer(Protocol):
    """What the score stage needs: losses for (instruction, input, output) triples."""

    model_id: str
    template: Any
    max_length: int
    head: Any

    def score(self, items: Sequence[ScoreItem]) -> list[Losses]: ...


class BackendFactory:
    """Builds (once) and caches the backend for each distinct model spec."""

    def __init__(self, cache_path: str | Path | None = None) -> None:
        self.cache = call_cache.CallCache(cache_path) if cache_path else None
        self._backends: dict[ModelSpec, Backend] = {}
        self._scorers: dict[ScorerSpec, Scorer] = {}

    def get(self, spec: ModelSpec) -> Backend:
        if spec not in self._backends:
            self._backends[spec] = self._build(spec)
        return self._backends[spec]

    def adopt(self, backend: Backend) -> Backend:
        """Use a ready backend object (a notebook's own, or a test double) behind the cache."""
        wrapped = (
            call_cache.CachedBackend(backend, self.cache) if self.cache is not None else backend
        )
        self._backends[ModelSpec(model=f"object:{id(backend)}")] = wrapped
        return wrapped

    def _build(self, spec: ModelSpec) -> Backend:
        inner: Backend
        if spec.backend == "local":
            from evolkit.models.local import LocalBackend

            inner = LocalBackend(spec.model, batch_size=spec.batch_size)
        elif spec.backend == "openai":
            from evolkit.models.openai import OpenAIBackend

            # base_url None: the backend falls back to $OPENAI_BASE_URL or says what to pass.
            options: dict[str, Any] = {
                "concurrency": spec.concurrency or max(spec.batch_size, 8),
            }
            if spec.timeout is not None:
                options["timeout"] = spec.timeout
            if spec.max_consecutive_errors is not None:
                options["max_consecutive_errors"] = spec.max_consecutive_errors
            if spec.extra_body:
                options["extra_body"] = json.loads(spec.extra_body)
            inner = OpenAIBackend(spec.model, spec.base_url, api_key=spec.api_key, **options)
        elif spec.backend == "vllm":
            from evolkit.models.vllm import VLLMBackend

            inner = VLLMBackend(spec.model)
        else:
            raise EvolkitError(
                f"unknown backend {spec.backend!r}; choose from {', '.join(BACKENDS)}"
            )
        return call_cache.CachedBackend(inner, self.cache) if self.cache is not None else inner

    def scorer(self, spec: ScorerSpec) -> Scorer:
        """The scorer role; built once per spec like the backends."""
        if spec not in self._scorers:
            self._scorers[spec] = self._build_scorer(spec)
        return self._scorers[spec]

    def adopt_scorer(self, scorer: Scorer) -> Scorer:
        self._scorers[ScorerSpec(model=f"object:{id(scorer)}")] = scorer
        return scorer

    def _build_scorer(self, spec: ScorerSpec) -> Scorer:
        from evolkit.models.scoring import as_template

        if spec.backend == "vllm":
            from evolkit.models.vllm import VLLMScorer

            return VLLMScorer.load(
                spec.model, template=as_template(spec.template), max_length=spec.max_length
            )
        if spec.backend != "local":
            raise EvolkitError(
                f"scoring runs on the local or vllm backend, not {spec.backend!r} "
                "(an HTTP server does not return prompt token losses)"
            )
        from evolkit.models.local import quiet_transformers, resolve_model_path
        from evolkit.models.scoring import LossScorer

        quiet_transformers()
        path, model_id = resolve_model_path(spec.model)
        scorer = LossScorer.load(
            path,
            template=as_template(spec.template),
            max_length=spec.max_length,
            batch_size=spec.batch_size,
        )
        scorer.model_id = model_id
        return scorer

    def usage(self) -> dict[str, dict[str, Any]]:
        """Token counts per model: fresh calls and cache hits."""
        out: dict[str, dict[str, Any]] = {}
        for b in self._backends.values():
            inner = b.inner if isinstance(b, call_cache.CachedBackend) else b
            out[b.model_id] = {
                "requests": inner.usage.requests + (b.usage.cached if b is not inner else 0),
                "cached": b.usage.cached if b is not inner else 0,
                "prompt_tokens": inner.usage.prompt_tokens,
                "completion_tokens": inner.usage.completion_tokens,
                "generate_seconds": round(inner.usage.seconds, 2),
                "retries": dict(sorted(inner.usage.retries.items())),
            }
        return out

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        if self.cache is not None:
            self.cache.close()
