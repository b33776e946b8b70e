"""Model backends behind one interface, and the factory that builds one per role.

Roles (evolver, responder, judge, ...) are separate settings; roles that name the same model
share one loaded instance, so a laptop never holds two copies of the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evolkit.cache import CachedBackend, CallCache
from evolkit.errors import EvolkitError
from evolkit.models.base import Backend, ChatRequest, Generation, SamplingParams, Usage

__all__ = [
    "Backend",
    "BackendFactory",
    "ChatRequest",
    "Generation",
    "ModelSpec",
    "SamplingParams",
    "Usage",
]


@dataclass(frozen=True)
class ModelSpec:
    model: str = "embedded"
    backend: str = "local"  # "local" | "openai" | "vllm"
    base_url: str | None = None
    api_key: str | None = None
    batch_size: int = 16


class BackendFactory:
    """Builds (once) and caches the backend for each distinct model spec."""

    def __init__(self, cache_path: str | Path | None = None) -> None:
        self.cache = CallCache(cache_path) if cache_path else None
        self._backends: dict[ModelSpec, Backend] = {}

    def get(self, spec: ModelSpec) -> Backend:
        if spec not in self._backends:
            self._backends[spec] = self._build(spec)
        return self._backends[spec]

    def adopt(self, backend: Backend) -> Backend:
        """Use a ready backend object (a notebook's own, or a test double) behind the cache."""
        wrapped = CachedBackend(backend, self.cache) if self.cache is not None else backend
        self._backends[ModelSpec(model=f"object:{id(backend)}")] = wrapped
        return wrapped

    def _build(self, spec: ModelSpec) -> Backend:
        inner: Backend
        if spec.backend == "local":
            from evolkit.models.local import LocalBackend

            inner = LocalBackend(spec.model, batch_size=spec.batch_size)
        elif spec.backend == "openai":
            from evolkit.models.openai import OpenAIBackend

            if not spec.base_url:
                raise EvolkitError(
                    "--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)"
                )
            inner = OpenAIBackend(
                spec.model, spec.base_url, api_key=spec.api_key, concurrency=max(spec.batch_size, 8)
            )
        elif spec.backend == "vllm":
            from evolkit.models.vllm import VLLMBackend

            inner = VLLMBackend(spec.model)
        else:
            raise EvolkitError(f"unknown backend {spec.backend!r}; use 'local', 'openai' or 'vllm'")
        return CachedBackend(inner, self.cache) if self.cache is not None else inner

    def usage(self) -> dict[str, dict[str, float]]:
        """Token counts per model: fresh calls and cache hits."""
        out: dict[str, dict[str, float]] = {}
        for b in self._backends.values():
            inner = b.inner if isinstance(b, CachedBackend) else b
            out[b.model_id] = {
                "requests": inner.usage.requests + (b.usage.cached if b is not inner else 0),
                "cached": b.usage.cached if b is not inner else 0,
                "prompt_tokens": inner.usage.prompt_tokens,
                "completion_tokens": inner.usage.completion_tokens,
                "generate_seconds": round(inner.usage.seconds, 2),
            }
        return out

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        if self.cache is not None:
            self.cache.close()
