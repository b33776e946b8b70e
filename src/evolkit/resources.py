"""What stages get where they run: models per role, the scorer, the sandbox, the embedder.

A :class:`ResourceSpec` is plain data (picklable): the runner builds one from a run's settings
and every engine worker turns it into live :class:`Resources` once, so a Ray actor loads its own
model instead of receiving one. Roles that name the same model share one loaded instance.
Ready objects given by a caller (a notebook's backend, a test double) travel in `objects` and are
used as they are, behind the call cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evolkit.errors import EvolkitError
from evolkit.models import BackendFactory, ModelSpec, ScorerSpec
from evolkit.models.base import Backend

MODEL_ROLES = ("evolver", "responder", "judge", "optimizer")


@dataclass(frozen=True)
class SandboxSpec:
    """Sandbox settings: they change speed and safety, never results."""

    limits: Any = None  # evolkit.sandbox.SandboxLimits
    workers: int = 2
    isolation: str = "auto"


@dataclass
class ResourceSpec:
    roles: dict[str, ModelSpec] = field(default_factory=dict)
    scorer: ScorerSpec | None = None
    sandbox: SandboxSpec | None = None
    embedder: str | None = None  # a sentence-transformers folder; None: all-MiniLM-L6-v2
    cache_path: str | None = None
    #: role -> a ready object to use as that role (not rebuilt in workers, pickled instead).
    objects: dict[str, Any] = field(default_factory=dict)


class Resources:
    """Live role objects, built on first use and closed together."""

    def __init__(self, spec: ResourceSpec) -> None:
        self.spec = spec
        self.factory = BackendFactory(spec.cache_path)
        self._live: dict[str, Any] = {}
        self._adopted: dict[int, Any] = {}
        self._sandbox_cm: Any = None

    def get(self, role: str) -> Any:
        if role not in self._live:
            self._live[role] = self._build(role)
        return self._live[role]

    def _build(self, role: str) -> Any:
        given = self.spec.objects.get(role)
        if given is not None:
            return self._adopt(role, given)
        if role in MODEL_ROLES:
            spec = self.spec.roles.get(role)
            if spec is None:
                raise EvolkitError(f"this run has no {role} model configured")
            return self.factory.get(spec)
        if role == "scorer":
            if self.spec.scorer is None:
                raise EvolkitError("this run has no scorer configured")
            return self.factory.scorer(self.spec.scorer)
        if role == "sandbox":
            from evolkit.sandbox import Sandbox, SandboxLimits

            sb = self.spec.sandbox or SandboxSpec()
            self._sandbox_cm = Sandbox(
                sb.limits or SandboxLimits(), workers=sb.workers, isolation=sb.isolation
            )
            return self._sandbox_cm.__enter__()
        if role == "embedder":
            from evolkit.measures.diversity import get_embedder

            name = self.spec.embedder
            return get_embedder(None if name in (None, "default") else name)
        raise EvolkitError(f"unknown role {role!r}")

    def _adopt(self, role: str, obj: Any) -> Any:
        # The same object given for several roles is wrapped once, so its cache and its usage
        # counts are shared like a model named twice.
        key = id(obj)
        if key not in self._adopted:
            if isinstance(obj, Backend):
                self._adopted[key] = self.factory.adopt(obj)
            elif role == "scorer":
                self._adopted[key] = self.factory.adopt_scorer(obj)
            else:
                self._adopted[key] = obj
        return self._adopted[key]

    def usage(self) -> dict[str, dict[str, Any]]:
        return self.factory.usage()

    def sandbox_info(self) -> dict[str, Any] | None:
        sb = self._live.get("sandbox")
        if sb is None:
            return None
        return {"isolation": sb.isolation, "mode": sb.mode}

    def close(self) -> None:
        try:
            self.factory.close()
        finally:
            if self._sandbox_cm is not None:
                self._sandbox_cm.__exit__(None, None, None)
                self._sandbox_cm = None
