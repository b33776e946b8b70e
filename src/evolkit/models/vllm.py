"""vLLM in process, for CUDA GPUs: a generation backend and an IFD/IC-IFD scorer.

vLLM schedules requests itself (continuous batching, paged KV cache, prefix caching), so the
backend hands it the whole list of requests in one ``LLM.generate`` call instead of batching
them as the transformers backend does. The scorer reads the same losses as
:class:`evolkit.models.scoring.LossScorer` from vLLM's prompt log-probabilities.

Everything here imports vLLM lazily: without it, asking for either gives one line saying how to
install it. Neither class has been run against a real vLLM engine on a GPU yet (the machines
this was written on have none); the request building and output mapping are tested against
vLLM's own data classes and a fake engine (tests/test_vllm_backend.py).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evolkit.errors import BackendError, EvolkitError
from evolkit.models.base import Backend, ChatRequest, Generation, render_prompt
from evolkit.models.identity import local_cache_id
from evolkit.models.local import resolve_model_path
from evolkit.models.scoring import (
    LayoutBuilder,
    Losses,
    ProgressFn,
    ScoreItem,
    Template,
    _jobs,
    _losses_from,
)

INSTALL_HINT = "pip install 'evolkit[vllm]' (vLLM needs a CUDA GPU)"
ENGINE_ARGS_ENV = "EVOLKIT_VLLM_ARGS"


@dataclass(frozen=True)
class VLLMApi:
    """The two vLLM names the request side needs (tests swap in look-alikes where vLLM's own
    classes do not import)."""

    SamplingParams: Any
    TokensPrompt: Any


def _import_vllm() -> Any:
    """The vllm module, or one clear line: not installed, or installed but broken."""
    # vLLM logs every engine step at INFO; evolkit has its own progress display.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as exc:
        if exc.name == "vllm":
            raise EvolkitError(
                f"the vllm backend needs vLLM, which is not installed: {INSTALL_HINT}"
            ) from exc
        raise EvolkitError(
            f"vLLM is installed but does not import ({_first_line(exc)}); "
            f"reinstall it with {INSTALL_HINT}"
        ) from exc
    return vllm


def _vllm_api() -> VLLMApi:
    vllm = _import_vllm()
    try:
        from vllm.inputs import TokensPrompt
    except ImportError as exc:
        raise EvolkitError(
            f"vLLM is installed but does not import ({_first_line(exc)}); "
            f"reinstall it with {INSTALL_HINT}"
        ) from exc
    return VLLMApi(vllm.SamplingParams, TokensPrompt)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- engines -------------------------------------------------------------------------------------

# One engine per (model, engine arguments) in a process: a generation role and the scorer on the
# same model share the weights and the KV cache instead of each reserving most of the GPU.
_ENGINES: dict[str, Any] = {}


def engine_args_from_env() -> dict[str, Any]:
    """Extra ``vllm.LLM`` arguments from ``$EVOLKIT_VLLM_ARGS`` (a JSON object), e.g.
    ``{"tensor_parallel_size": 2, "max_model_len": 8192}``: the model spec of a role carries no
    GPU settings, so this is how a run sets them."""
    raw = os.environ.get(ENGINE_ARGS_ENV, "").strip()
    if not raw:
        return {}
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EvolkitError(f"${ENGINE_ARGS_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise EvolkitError(f"${ENGINE_ARGS_ENV} must be a JSON object of vllm.LLM arguments")
    return args


def shared_llm(path: str, engine_args: Mapping[str, Any] | None = None) -> Any:
    """The process's ``vllm.LLM`` for this model and these arguments, created on first use."""
    args = {**(engine_args or {}), "model": path}
    key = json.dumps(args, sort_keys=True, default=str)
    if key not in _ENGINES:
        vllm = _import_vllm()
        try:
            _ENGINES[key] = vllm.LLM(**args)
        except Exception as exc:
            raise BackendError(f"vLLM could not load '{path}': {_first_line(exc)}") from exc
    return _ENGINES[key]


def release_engines() -> None:
    """Drop every shared engine so its GPU memory can be reclaimed (closing a backend does not:
    another role or the scorer may still use the same engine)."""
    _ENGINES.clear()
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def max_model_len(llm: Any) -> int | None:
    """The engine's context length (prompt plus generated tokens), when it tells."""
    for owner in (getattr(llm, "llm_engine", None), llm):
        value = getattr(getattr(owner, "model_config", None), "max_model_len", None)
        if isinstance(value, int):
            return value
    return None


# -- generation ----------------------------------------------------------------------------------


class VLLMBackend(Backend):
    """Chat generation with vLLM in this process (``--backend vllm``).

    ``llm`` is a ready ``vllm.LLM`` (or anything with its ``generate`` / ``get_tokenizer``);
    without one, the shared engine for ``model`` is created with ``engine_args`` (default:
    ``$EVOLKIT_VLLM_ARGS``).
    """

    def __init__(
        self,
        model: str = "embedded",
        *,
        llm: Any | None = None,
        engine_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._api = _vllm_api()
        self.path, self.model_id = resolve_model_path(model)
        self.engine_args = dict(engine_args_from_env() if engine_args is None else engine_args)
        self.llm = llm if llm is not None else shared_llm(self.path, self.engine_args)
        self.tokenizer: Any = self.llm.get_tokenizer()
        self.max_model_len = max_model_len(self.llm)
        self._token_texts: dict[int, str] = {}

    @functools.cached_property
    def cache_id(self) -> str:
        """The transformers backend's identity of the model, marked as vLLM's with its dtype:
        another engine (other kernels, its own sampler) writes other text from the same seed."""
        dtype = self.engine_args.get("dtype", "auto")
        return f"vllm[{dtype}]:{local_cache_id(self.model_id, self.path)}"

    # -- requests ------------------------------------------------------------------------------
    def render(self, request: ChatRequest) -> str:
        """The exact text the model continues; the same rule as the transformers backend."""
        return render_prompt(self.tokenizer, request)

    def sampling_params(self, request: ChatRequest) -> Any:
        """vLLM's SamplingParams for one request, field for field.

        The seed is the request's own (content plus run seed), so a row samples the same
        tokens whatever it is batched with. Logprobs are vLLM's default raw ones (before
        temperature, top-p and penalties), as ``SamplingParams.logprobs`` defines them.
        """
        p = request.params
        kwargs: dict[str, Any] = {
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_new_tokens,
            "seed": request.sampling_seed(),
        }
        if p.repetition_penalty is not None:
            kwargs["repetition_penalty"] = p.repetition_penalty
        if p.logprobs:
            # vLLM returns the chosen token's entry plus the `logprobs` most likely ones.
            kwargs["logprobs"] = p.top_logprobs
        return self._api.SamplingParams(**kwargs)

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        t0 = time.perf_counter()
        results: list[Generation | None] = [None] * len(requests)
        texts = [self.render(r) for r in requests]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        todo: list[int] = []
        prompts: list[Any] = []
        params: list[Any] = []
        for i, (req, ids) in enumerate(zip(requests, encoded, strict=True)):
            problem = self._prompt_problem(len(ids))
            if problem is None:
                try:
                    sp = self.sampling_params(req)
                except (ValueError, TypeError) as exc:
                    problem = f"vLLM refused the sampling parameters: {_first_line(exc)}"
            if problem is not None:
                results[i] = Generation(
                    text="", finish_reason="error", prompt_tokens=len(ids), error=problem
                )
                continue
            todo.append(i)
            prompts.append(self._api.TokensPrompt(prompt_token_ids=list(ids)))
            params.append(sp)
        if prompts:
            try:
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
            except Exception as exc:
                raise BackendError(f"vLLM generation failed: {_first_line(exc)}") from exc
            for i, out in zip(todo, outputs, strict=True):
                results[i] = self._generation(out, requests[i])
        gens = [g if g is not None else Generation(text="", finish_reason="error") for g in results]
        for g in gens:
            self.usage.add(g)
        self.usage.seconds += time.perf_counter() - t0
        return gens

    def _prompt_problem(self, n: int) -> str | None:
        """Why a prompt of n tokens cannot be sent (vLLM would fail the whole call on it)."""
        if n == 0:
            return "empty prompt: nothing to continue"
        if self.max_model_len is not None and n >= self.max_model_len:
            return (
                f"prompt of {n} tokens leaves no room to generate in the model's "
                f"max_model_len of {self.max_model_len} tokens"
            )
        return None

    # -- outputs -------------------------------------------------------------------------------
    def _generation(self, out: Any, request: ChatRequest) -> Generation:
        """One RequestOutput as a Generation.

        As in the transformers backend, a stop token is not part of the text or the count but
        keeps its place in the per-token lists (its probability says how sure the stop was).
        """
        prompt_tokens = len(out.prompt_token_ids or [])
        comp = out.outputs[0]
        reason = comp.finish_reason
        if reason not in ("stop", "length"):
            return Generation(
                text="",
                finish_reason="error",
                prompt_tokens=prompt_tokens,
                error=f"vLLM ended the request with finish reason {reason!r}",
            )
        ids = list(comp.token_ids)
        n = len(ids)
        # stop_reason: None = the EOS token, an int = a stop token id; both are the last id.
        # A string would be a stop string, which is not a token of its own (none are sent).
        if reason == "stop" and ids and not isinstance(comp.stop_reason, str):
            n -= 1
        gen = Generation(
            text=str(comp.text),
            finish_reason=str(reason),
            prompt_tokens=prompt_tokens,
            completion_tokens=n,
        )
        params = request.params
        if params.logprobs and comp.logprobs is not None:
            self._fill_logprobs(gen, ids, comp.logprobs, params.top_logprobs)
        return gen

    def _fill_logprobs(
        self, gen: Generation, ids: list[int], positions: Sequence[Any], top: int
    ) -> None:
        """Per-token detail from vLLM's {token id: Logprob} dicts (all or nothing: a partial
        list would misalign tokens and values)."""
        if len(positions) != len(ids):
            return
        values: list[float] = []
        alternatives: list[list[tuple[str, float]]] = []
        for tid, entries in zip(ids, positions, strict=True):
            own = entries.get(tid) if entries else None
            if own is None:
                return
            values.append(float(own.logprob))
            if top > 0:
                ranked = sorted(
                    entries.items(),
                    key=lambda kv: (
                        kv[1].rank if kv[1].rank is not None else math.inf,
                        -kv[1].logprob,
                    ),
                )
                # The chosen token's entry is always there, even when it ranks below `top`.
                kept = [kv for kv in ranked if kv[1].rank is None or kv[1].rank <= top][:top]
                alternatives.append([(self._token_text(t), float(lp.logprob)) for t, lp in kept])
        gen.tokens = [self._token_text(t) for t in ids]
        gen.token_logprobs = values
        if top > 0:
            gen.top_logprobs = alternatives

    def _token_text(self, token: int) -> str:
        """A token's text as the transformers backend writes it (decode of the one id), so the
        same model gives the same token strings whichever backend runs it."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = str(self.tokenizer.decode([token]))
        return text

    def close(self) -> None:
        """Nothing to release per backend: the engine is shared (see :func:`release_engines`)."""


# -- scoring -------------------------------------------------------------------------------------


class VLLMScorer:
    """L(Q), L(A|Q) and L(A) from vLLM's prompt log-probabilities; LossScorer's interface.

    It builds the very layouts :class:`~evolkit.models.scoring.LossScorer` scores (the same
    :class:`~evolkit.models.scoring.LayoutBuilder`, the same scored positions), sends each
    sequence that has a scored token as token ids with ``prompt_logprobs=0`` (vLLM then returns,
    for every prompt position, the log-probability of the token actually there), sums the
    negative log-probabilities per span and turns them into losses through the same
    ``_losses_from``. So the numbers match the transformers scorer up to the engines' float
    noise on the same model and dtype (bf16 engines differ more than fp32 ones).
    """

    head = "vllm-prompt-logprobs"

    def __init__(
        self,
        llm: Any,
        tokenizer: Any | None = None,
        template: Template = "plain",
        max_length: int = 2048,
        chunk_tokens: int = 1 << 20,
    ) -> None:
        self._api = _vllm_api()
        self.llm = llm
        #: The name recorded in rows; `load` sets it from the model folder.
        self.model_id = "vllm"
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        self.template: Template = template
        self.max_length = max_length
        self.chunk_tokens = max(1, chunk_tokens)
        self.builder = LayoutBuilder(self.tokenizer, template, max_length)
        limit = max_model_len(llm)
        # vLLM takes a prompt only if one more token fits after it.
        if limit is not None and max_length >= limit:
            raise EvolkitError(
                f"--max-length {max_length} does not fit the vLLM engine's max_model_len of "
                f"{limit}: lower --max-length below {limit}, or start the engine with "
                f"max_model_len above {max_length}"
            )

    @classmethod
    def load(
        cls,
        model: str,
        template: Template = "plain",
        max_length: int = 2048,
        engine_args: Mapping[str, Any] | None = None,
    ) -> VLLMScorer:
        """The scorer on the shared engine of a model folder or hub id (``embedded`` works)."""
        _import_vllm()
        path, model_id = resolve_model_path(model)
        args = dict(engine_args_from_env() if engine_args is None else engine_args)
        scorer = cls(shared_llm(path, args), template=template, max_length=max_length)
        scorer.model_id = model_id
        return scorer

    def layouts(self, items: Sequence[ScoreItem]) -> list[Any]:
        return self.builder.build(items)

    def score(self, items: Sequence[ScoreItem], progress: ProgressFn | None = None) -> list[Losses]:
        """Losses for each item, in order. ``progress(done, total)`` counts prompt tokens."""
        layouts = self.builder.build(items)
        jobs = _jobs(layouts)
        # A sequence is cut after its last scored token: what follows changes no loss.
        seqs = [list(job.ids[: job.targets[-1] + 1]) for job in jobs]
        params = self._api.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        sums = [0.0] * (3 * len(layouts))
        total = sum(len(s) for s in seqs)
        done = 0
        for start, end in _chunks([len(s) for s in seqs], self.chunk_tokens):
            prompts = [self._api.TokensPrompt(prompt_token_ids=s) for s in seqs[start:end]]
            try:
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
            except Exception as exc:
                raise BackendError(f"vLLM scoring failed: {_first_line(exc)}") from exc
            for job, out in zip(jobs[start:end], outputs, strict=True):
                plp = out.prompt_logprobs
                for t, seg in zip(job.targets, job.segments, strict=True):
                    entry = plp[t].get(job.ids[t]) if plp is not None and plp[t] else None
                    if entry is None:
                        raise BackendError(
                            "vLLM returned no prompt log-probability for a scored token "
                            f"(position {t}); is prompt_logprobs supported by this engine?"
                        )
                    sums[seg] -= float(entry.logprob)
            done += sum(len(s) for s in seqs[start:end])
            if progress is not None:
                progress(done, total)
        return [_losses_from(lay, sums[3 * i : 3 * i + 3]) for i, lay in enumerate(layouts)]


def _chunks(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` runs of about ``budget`` tokens: each is one generate call,
    large enough for vLLM to fill the GPU, small enough to report progress."""
    out: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if used and used + n > budget:
            out.append((start, i))
            start, used = i, 0
        used += n
    if start < len(lengths):
        out.append((start, len(lengths)))
    return out
