"""The Ray engine: the same steps, on a Ray cluster (or a local one), with the same results.

A step's not-yet-committed inputs are cut into the same batches the local engine would use;
each batch becomes one row of a Ray Dataset and flows through the step's stages with
`map_batches` and an actor pool: each actor builds its own resources (models, sandbox) once from
the picklable ResourceSpec and sets its own copy of the stages up. Consecutive partitionable
stages share one pool; a stage that must see every row in order (deduplication) runs on a
single actor, and the dataset keeps its order. A whole-step stage gets every batch's state
joined into one, on a single actor (stages/base.py). The driver is the one writer: it commits every
finished batch to the run folder through the same journal as the local engine, so a Ray run
killed with -9 resumes exactly like a local one.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import resource
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from evolkit.engines.base import (
    ChainState,
    Engine,
    StepResult,
    check_whole_step,
    commit_outcome,
    merge_usage,
    now,
    step_start,
    whole_outcome,
    whole_step_index,
)
from evolkit.engines.base import batches as split
from evolkit.errors import EvolkitError
from evolkit.progress import StepProgress
from evolkit.records import Record
from evolkit.resources import Resources, ResourceSpec
from evolkit.runs import RunFolder
from evolkit.stages.base import Stage

log = logging.getLogger(__name__)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise EvolkitError(
            "--engine ray needs Ray Data: pip install 'evolkit[ray]' (ray[data])"
        ) from None
    return ray


def segments(stages: Sequence[Stage]) -> list[tuple[bool, list[Stage]]]:
    """Runs of consecutive partitionable stages, and each order-dependent stage alone."""
    out: list[tuple[bool, list[Stage]]] = []
    for stage in stages:
        if stage.partitionable and out and out[-1][0]:
            out[-1][1].append(stage)
        else:
            out.append((stage.partitionable, [stage]))
    return out


class ChainActor:
    """A Ray Data actor: its own resources and stages, applied to serialised batch states."""

    def __init__(
        self,
        stages: list[Stage],
        spec: ResourceSpec,
        previous: list[dict[str, Any]] | None = None,
        threads: int = 1,
    ) -> None:
        # Each actor gets its share of the cores. Set before torch is imported (OpenMP reads it
        # once), and without importing torch here: a model-free step starts faster.
        os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(max(1, threads))
        self.resources = Resources(spec)
        self.stages = [copy.deepcopy(s) for s in stages]
        kept = [Record.model_validate(r) for r in previous or []]
        for stage in self.stages:
            stage.setup(self.resources)
            stage.resume(kept)
        self._seen: dict[str, dict[str, Any]] = {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = []
        for blob in batch["state"]:
            data = json.loads(blob)
            result = ChainState.from_json(data).through(self.stages).to_json()
            usage = data.get("usage", {})
            merge_usage(usage, self._usage_delta())
            result["usage"] = usage
            # What this worker holds: its peak resident memory (models, caches).
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            result["worker_mb"] = max(float(data.get("worker_mb", 0.0)), round(peak, 1))
            out.append(json.dumps(result))
        return {"state": np.array(out, dtype=object)}

    def _usage_delta(self) -> dict[str, dict[str, Any]]:
        """What the models did since this actor's last batch (so the driver can sum it)."""
        now_usage = self.resources.usage()
        delta: dict[str, dict[str, Any]] = {}
        for model, u in now_usage.items():
            before = self._seen.get(model, {})
            d: dict[str, Any] = {}
            for k, v in u.items():
                if isinstance(v, dict):
                    prev = before.get(k, {})
                    d[k] = {kk: vv - prev.get(kk, 0) for kk, vv in v.items()}
                else:
                    d[k] = v - before.get(k, 0)
            delta[model] = d
        self._seen = json.loads(json.dumps(now_usage))
        return delta


class RayEngine(Engine):
    name = "ray"

    def __init__(
        self,
        resources: ResourceSpec,
        batch_size: int = 16,
        progress: bool = True,
        workers: int = 2,
        address: str | None = None,
    ) -> None:
        super().__init__(resources, batch_size, progress)
        self.workers = max(1, workers)
        self.address = address
        self.ray = _import_ray()
        self._started = False
        self._usage: dict[str, dict[str, Any]] = {}
        self._sandbox: dict[str, Any] | None = None
        self.worker_mb = 0.0  # the largest peak resident memory a worker reported
        if not self.ray.is_initialized():
            self._init()
        # Ray Data logs every operator's metrics when a run fails: our own line says enough.
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = self.ray.data.DataContext.get_current()
        # The same batches in the same order as the local engine: file order and the rows of
        # order-dependent stages (dedup) then match it exactly.
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False

    def _init(self) -> None:
        ray = self.ray
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "ignore_reinit_error": True,
        }
        if self.address:
            kwargs["address"] = self.address
        else:
            # Logical CPUs are scheduling tokens: leave room for a pool per model stage plus
            # the single actor of an order-dependent stage, whatever the core count.
            kwargs["num_cpus"] = max(os.cpu_count() or 1, 2 * self.workers + 2)
            # A local cluster runs the driver's code: its workers import what it can import
            # (a notebook's or a test's own backend classes, an uninstalled checkout).
            paths = [p for p in sys.path if p]
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
        try:
            ray.init(**kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, ... from ray.init
            where = self.address or "a local Ray instance"
            raise EvolkitError(f"cannot start or join {where}: {exc}") from None
        self._started = True

    def info(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "address": self.address or "local",
            "worker_peak_mb": self.worker_mb,
        }

    def run(
        self, step: str, stages: Sequence[Stage], inputs: Sequence[Record], run: RunFolder
    ) -> StepResult:
        todo, skipped = step_start(run, step, inputs)
        check_whole_step(step, stages, todo, skipped)
        previous = run.kept_records(step)
        failures: Counter[str] = Counter()
        kept_new: list[Record] = []
        processed = failed = 0
        t0 = now()
        with StepProgress(
            step, len(inputs), skipped, stream_is_tty=None if self.progress else False
        ) as bar:
            if todo:
                prev = [r.model_dump(mode="json") for r in previous]
                states = [ChainState.start(b) for b in split(todo, self.batch_size)]
                whole = whole_step_index(stages)
                if whole is not None:
                    # The stages before the whole-step one run batch by batch as usual; then
                    # the rest gets every row as one state, on one actor.
                    if whole:
                        states = self._states(self._pipeline(states, stages[:whole], prev), bar)
                    states = [ChainState.merge(states)]
                    stages = stages[whole:]
                try:
                    for row in self._pipeline(states, stages, prev).iter_rows():
                        data = json.loads(row["state"])
                        merge_usage(self._usage, data.pop("usage", {}))
                        self.worker_mb = max(self.worker_mb, float(data.pop("worker_mb", 0.0)))
                        outcome = ChainState.from_json(data).outcome()
                        if whole is not None:
                            outcome = whole_outcome(outcome)
                        commit_outcome(run, step, outcome)
                        kept_new.extend(outcome.kept)
                        processed += len(outcome.inputs)
                        failed += len(outcome.failed_inputs)
                        failures.update(outcome.failures)
                        if not whole:
                            n = len(outcome.inputs) + len(outcome.failed_inputs)
                            bar.advance(n, self.retries())
                except Exception as exc:
                    raise _unwrap(exc) from None
        return StepResult(
            kept=previous + kept_new,
            processed=processed,
            skipped=skipped,
            seconds=now() - t0,
            failed=failed,
            failures=failures,
        )

    def _pipeline(self, states: list[ChainState], stages: Sequence[Stage], prev: list) -> Any:
        """A dataset of batch states flowing through `stages` (one actor pool per segment)."""
        ray = self.ray
        items = [{"state": json.dumps(s.to_json())} for s in states]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        cores = os.cpu_count() or 1
        for partitionable, group in segments(stages):
            size = self.workers if partitionable else 1
            threads = max(1, cores // self.workers) if partitionable else 1
            ds = ds.map_batches(
                ChainActor,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=size),
                fn_constructor_kwargs={
                    "stages": group,
                    "spec": self.spec,
                    "previous": None if partitionable else prev,
                    "threads": threads,
                },
                num_cpus=1,
            )
        return ds

    def _states(self, ds: Any, bar: StepProgress) -> list[ChainState]:
        """Every batch's state after the stages before a whole-step stage (progress moves)."""
        out = []
        try:
            for row in ds.iter_rows():
                data = json.loads(row["state"])
                merge_usage(self._usage, data.pop("usage", {}))
                state = ChainState.from_json(data)
                out.append(state)
                bar.advance(len(state.inputs), self.retries())
        except Exception as exc:
            raise _unwrap(exc) from None
        return out

    def usage(self) -> dict[str, dict[str, Any]]:
        return self._usage

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
            self._started = False


def _unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task failure (a BackendError, say), else a line."""
    seen = exc
    for _ in range(8):
        if isinstance(seen, EvolkitError):
            return seen
        cause = getattr(seen, "cause", None) or seen.__cause__
        if cause is None:
            break
        seen = cause
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if "EvolkitError" in line or "BackendError" in line:
            return EvolkitError(line.split(":", 1)[-1].strip())
    return exc
