"""The one runner every scenario uses: what a run does around its steps, written once.

A scenario reads as the list of steps it runs; the runner opens (and locks) the run folder with
the run's fingerprint, reads the input safely, builds the resources each role needs, picks the
engine, and writes the summary's common part (time, models, retries, failed calls, outputs).

A run where some model calls failed ends in :class:`RunIncompleteError` after writing its
summary: those rows were neither kept nor rejected, and the same command redoes just them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from evolkit.cache import default_cache_path
from evolkit.config import Settings, opt, parse_json_object
from evolkit.console import log_file
from evolkit.engines.base import ENGINES, Engine, StepResult
from evolkit.errors import EvolkitError
from evolkit.io.readers import BadRow, hub_ref
from evolkit.models import BACKENDS, ModelSpec, ScorerSpec
from evolkit.records import Record
from evolkit.resources import ResourceSpec, SandboxSpec
from evolkit.runs import EVOLVED, RunFolder
from evolkit.stages.base import Stage

log = logging.getLogger(__name__)

ON_BAD = ("error", "skip")


class RunIncompleteError(EvolkitError):
    """Some rows' model calls failed: they were not written, and a rerun redoes them."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class RunSettings(Settings):
    """Settings every command that writes a run folder has."""

    batch_size: int = opt(
        16,
        "Rows per batch: the unit of progress and checkpoints, and of generate calls.",
        fingerprint=False,
    )
    engine: str = opt(
        "local",
        "Where stages run: in this process, or on a Ray cluster.",
        choices=ENGINES,
        fingerprint=False,
    )
    concurrent_batches: int = opt(
        4,
        "Local engine: batches in flight at once; their model calls are merged, so a local "
        "model always gets a full batch (1 = one batch at a time).",
        fingerprint=False,
    )
    workers: int = opt(2, "Ray: workers (actors) per model stage.", fingerprint=False)
    address: str | None = opt(
        None,
        "Ray: the cluster to join (e.g. ray://host:10001 or auto); none starts a local one.",
        fingerprint=False,
    )
    cache: str | None = opt(
        "default",
        "Call cache file ('default': the per-user evolkit cache).",
        fingerprint=False,
        none_flag="--no-cache",
    )
    overwrite: bool = opt(
        False,
        "Start the run over in OUT (only evolkit's own files are removed).",
        fingerprint=False,
    )
    limit: int | None = opt(None, "Use only the first N input rows.")
    on_bad_record: str = opt(
        "error",
        "A malformed input row: error stops; skip writes it to bad_records.jsonl.",
        choices=ON_BAD,
    )
    progress: bool = opt(True, "Show progress.", fingerprint=False, cli=False)

    def check(self) -> None:
        super().check()
        if self.batch_size < 1:
            raise EvolkitError("batch_size must be at least 1")
        if self.workers < 1:
            raise EvolkitError("workers must be at least 1")
        if self.concurrent_batches < 1:
            raise EvolkitError("concurrent_batches must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise EvolkitError("limit must be at least 1")

    def cache_path(self) -> str | None:
        if self.cache is None:
            return None
        if self.cache == "default":
            return str(default_cache_path())
        return self.cache


@dataclass
class ModelSettings(Settings):
    """How models are reached; each scenario adds its role fields (evolver, judge, ...)."""

    backend: str = opt(
        "local",
        "Where models run: local (transformers in this process), openai (any "
        "OpenAI-compatible server), vllm (in-process vLLM on a GPU).",
        choices=BACKENDS,
    )
    base_url: str | None = opt(
        None, "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (or $OPENAI_BASE_URL)."
    )
    api_key: str | None = opt(
        None,
        "API key for --backend openai (default: $OPENAI_API_KEY).",
        fingerprint=False,
        secret=True,
    )
    extra_body: str | None = opt(
        None,
        "JSON object merged into every request body of --backend openai, for server-specific "
        "sampling fields, e.g. '{\"top_k\": 20}'.",
    )
    timeout: float = opt(
        120.0, "Seconds one HTTP request may take before it is retried.", fingerprint=False
    )
    concurrency: int = opt(8, "HTTP requests in flight at once.", fingerprint=False)
    max_consecutive_errors: int = opt(
        3,
        "Stop the run when the same non-retryable HTTP error (4xx other than 408/429) answers "
        "this many requests in a row; 0 never stops.",
        fingerprint=False,
    )

    def check(self) -> None:
        super().check()
        parse_json_object(self.extra_body, "extra_body")
        if self.timeout <= 0:
            raise EvolkitError("timeout must be positive")
        if self.concurrency < 1:
            raise EvolkitError("concurrency must be at least 1")
        if self.max_consecutive_errors < 0:
            raise EvolkitError("max_consecutive_errors must be 0 or more")

    def model_spec(self, model: str, batch_size: int = 16) -> ModelSpec:
        extra = parse_json_object(self.extra_body, "extra_body")
        return ModelSpec(
            model=model,
            backend=self.backend,
            base_url=self.base_url,
            api_key=self.api_key,
            batch_size=batch_size,
            extra_body=json.dumps(extra, sort_keys=True) if extra else None,
            timeout=self.timeout,
            concurrency=self.concurrency,
            max_consecutive_errors=self.max_consecutive_errors,
        )


def rows_fingerprint(rows: Sequence[Record]) -> str:
    """A stable digest of in-memory input rows (they have no path to record)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(r.to_json().encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def describe_input(source: Any) -> Any:
    """What a run's config records about an input: a resolved path, a Hub name
    (hf://ORG/NAME@SPLIT), or a digest of rows."""

    def one(path: str | Path) -> str:
        ref = hub_ref(path)
        return str(ref) if ref is not None else str(Path(path).resolve())

    if isinstance(source, str | Path):
        return one(source)
    if isinstance(source, list | tuple) and all(isinstance(s, str | Path) for s in source):
        return [one(s) for s in source]
    # Bad rows are left out of the digest: with on_bad_record="skip" they must not stop the run.
    return {"rows": "in memory", "digest": rows_fingerprint(as_records(source, "skip")[0])}


def as_records(source: Any, on_bad: str, limit: int | None = None) -> tuple[list[Record], list]:
    from evolkit.io.readers import read_records, records_from_rows

    bad: list[BadRow] = []
    if isinstance(source, str | Path):
        rows = list(read_records(source, on_bad=on_bad, bad_sink=bad.append, limit=limit))  # type: ignore[arg-type]
    else:
        rows = records_from_rows(source, on_bad=on_bad, bad_sink=bad.append, limit=limit)  # type: ignore[arg-type]
    return rows, bad


class Runner:
    """Opens a run and runs its steps; use it as a context manager (it holds the lock)."""

    def __init__(
        self,
        command: str,
        settings: RunSettings,
        out: str | Path,
        *,
        inputs: Mapping[str, Any],
        roles: Mapping[str, ModelSpec] | None = None,
        scorer: ScorerSpec | None = None,
        sandbox: SandboxSpec | None = None,
        embedder: str | None = None,
        objects: Mapping[str, Any] | None = None,
        kept_name: str = EVOLVED,
    ) -> None:
        self.t_start = time.perf_counter()
        self.settings = settings
        self.command = command
        fingerprinted = {**settings.fingerprint_dict(), **inputs}
        self.folder = RunFolder(
            out,
            fingerprinted,
            overwrite=settings.overwrite,
            kept_name=kept_name,
            command=command,
            settings={**settings.to_dict(), "inputs": dict(inputs)},
        )
        # run.log gets every progress line, and how the run ended.
        self._log = contextlib.ExitStack()
        self._log.enter_context(log_file(self.folder.log_path))
        given = {k: v for k, v in (objects or {}).items() if v is not None}
        self.spec = ResourceSpec(
            roles=dict(roles or {}),
            scorer=scorer,
            sandbox=sandbox,
            embedder=embedder,
            cache_path=settings.cache_path(),
            objects=given,
        )
        self.engine: Engine = make_engine(settings, self.spec)
        self.processed = 0
        self.failed = 0
        self.failures: Counter[str] = Counter()
        self.work_seconds = 0.0
        self.bad_records = 0
        self.step_times: dict[str, dict[str, Any]] = {}

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.engine.close()
        finally:
            try:
                self._log.__exit__(exc_type, exc, tb)
            finally:
                self.folder.close()

    # -- input -------------------------------------------------------------------------------
    def read(self, source: Any, *, what: str = "input") -> list[Record]:
        """Every input row, read before any model loads; bad rows go to bad_records.jsonl.

        `source` is a file or folder path, or rows in memory (dicts, a datasets.Dataset, a
        pandas DataFrame). An input with no rows at all is an error, not an empty success.
        """
        records, bad = as_records(source, self.settings.on_bad_record, self.settings.limit)
        self.folder.write_bad_rows(bad)
        self.bad_records += len(bad)
        if not records:
            where = source if isinstance(source, str | Path) else "the rows given"
            why = (
                f"all {len(bad)} rows were bad (see {self.folder.bad_path})"
                if bad
                else ("it is empty or holds only blank lines")
            )
            raise EvolkitError(f"{where}: no {what} rows to work on: {why}")
        return records

    # -- steps -------------------------------------------------------------------------------
    def step(self, name: str, stages: Sequence[Stage], inputs: Sequence[Record]) -> StepResult:
        t0 = time.perf_counter()
        result = self.engine.run(name, stages, inputs, self.folder)
        self.work_seconds += time.perf_counter() - t0
        self.processed += result.processed
        self.failed += result.failed
        timing = self.step_times.setdefault(name, {"rows": 0, "seconds": 0.0})
        timing["rows"] += result.processed
        timing["seconds"] = round(timing["seconds"] + result.seconds, 2)
        self.failures.update(result.failures)
        if result.failed:
            log.warning(
                "%s: %d input row(s) left for the next run: a model call failed (%s)",
                name,
                result.failed,
                result.failures.most_common(1)[0][0],
            )
        return result

    def kept(self, step: str) -> list[Record]:
        return self.folder.kept_records(step)

    # -- summary -----------------------------------------------------------------------------
    def finish(self, summary: dict[str, Any], outputs: Mapping[str, Path] | None = None) -> dict:
        """Add the common part, write summary.json, and fail loudly if calls failed."""
        usage = self.engine.usage()
        retries: Counter[str] = Counter()
        for u in usage.values():
            retries.update(u.get("retries", {}))
        work = self.work_seconds
        tail: dict[str, Any] = {
            "seconds": {
                "total": round(time.perf_counter() - self.t_start, 2),
                "work": round(work, 2),
            },
            "rows_processed_this_invocation": self.processed,
            # per step, this invocation: rows committed, seconds, and seconds per 1,000 rows
            "step_seconds": {
                k: {**v, "per_1000_rows": round(1000 * v["seconds"] / v["rows"], 1)}
                if v["rows"]
                else v
                for k, v in self.step_times.items()
            },
            "rows_per_s": round(self.processed / work, 4) if work > 0 else None,
            "resumed": self.folder.resumed,
            "bad_records": self.bad_records,
            "models": usage,
            "retries": dict(retries),
            "failed_calls": {
                "rows_left_for_next_run": self.failed,
                "by_cause": dict(self.failures.most_common(10)),
            },
            "engine": self.engine.info(),
            "outputs": {k: str(v) for k, v in (outputs or {}).items()},
        }
        sandbox = self.engine.sandbox_info()
        if sandbox is not None:
            tail["sandbox_in_force"] = sandbox
        tail["outputs"].setdefault("summary", str(self.folder.summary_path))
        full = {**summary, **tail}
        self.folder.write_summary(full)
        if self.failed:
            cause = self.failures.most_common(1)[0][0]
            raise RunIncompleteError(
                f"{self.failed} input row(s) were not finished because a model call failed "
                f"({cause}); they were not written as kept or rejected: run the same command "
                f"again to retry just them (summary: {self.folder.summary_path})",
                full,
            )
        return full


def make_engine(settings: RunSettings, spec: ResourceSpec) -> Engine:
    if settings.engine == "ray":
        from evolkit.engines.ray import RayEngine

        return RayEngine(
            spec,
            batch_size=settings.batch_size,
            progress=settings.progress,
            workers=settings.workers,
            address=settings.address,
        )
    from evolkit.engines.local import LocalEngine

    return LocalEngine(
        spec,
        batch_size=settings.batch_size,
        progress=settings.progress,
        concurrent_batches=settings.concurrent_batches,
    )
