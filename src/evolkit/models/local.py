"""Local transformers backend: continuous batching with shared-prefix reuse, on CPU or GPU.

The decode loop lives in `evolkit.models.decode`: one running batch that finished rows leave and
waiting requests join, prompts' common prefix computed once, each request sampling with its own
seed. The older static path (length-sorted, left-padded batches through `model.generate`) stays
selectable with `scheduler="static"`, for comparison and for models whose cache layout the
decode loop does not handle. fp32 on CPU because bf16 matrix products ran ~100x slower on these
CPUs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evolkit.errors import BackendError
from evolkit.models.base import Backend, ChatRequest, Generation, SamplingParams, render_prompt
from evolkit.models.embedded import EMBEDDED_ALIASES, EMBEDDED_NAME, embedded_model_dir
from evolkit.models.identity import local_cache_id


def quiet_transformers() -> None:
    """Keep transformers' own progress bars and warnings out of evolkit's progress display."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def resolve_model_path(spec: str) -> tuple[str, str]:
    """Map a model setting to (path or hub id to load, model id to record)."""
    if spec in EMBEDDED_ALIASES:
        return str(embedded_model_dir()), EMBEDDED_NAME
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BackendError(f"{spec}: not a Hugging Face model folder (no config.json)")
        return str(path), path.name
    return spec, spec


SCHEDULERS = ("continuous", "static")


class LocalBackend(Backend):
    """A Hugging Face causal LM loaded in-process.

    `batch_size` is the most rows decoded at once (the memory bound of the running batch);
    `scheduler` picks the continuous decode loop or the static `model.generate` batches;
    `prefix_reuse` turns shared-prefix reuse on or off, and `prefix_cache_mb` bounds the
    key/value states of shared prefixes kept from one call to the next (0 keeps none).
    """

    def __init__(
        self,
        model: str = EMBEDDED_NAME,
        batch_size: int = 16,
        device: str | None = None,
        dtype: str = "auto",
        *,
        scheduler: str = "continuous",
        prefix_reuse: bool = True,
        prefix_cache_mb: float = 256.0,
    ) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if scheduler not in SCHEDULERS:
            raise BackendError(
                f"unknown scheduler '{scheduler}': use one of {', '.join(SCHEDULERS)}"
            )
        if prefix_cache_mb < 0:
            raise BackendError(f"prefix_cache_mb must be 0 or more, not {prefix_cache_mb}")
        quiet_transformers()
        path, self.model_id = resolve_model_path(model)
        self.batch_size = max(1, batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            torch_dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
            self.model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        except OSError as exc:
            raise BackendError(
                f"cannot load model '{model}': {str(exc).splitlines()[0]} "
                "(give a local model folder, or 'embedded')"
            ) from exc
        self.model = self.model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._torch = torch
        self._eos = _eos_ids(self.model, tok)
        self._token_texts: dict[int, str] = {}
        self._setup_decoder(scheduler, prefix_reuse, prefix_cache_mb)

    def _setup_decoder(self, scheduler: str, prefix_reuse: bool, prefix_cache_mb: float) -> None:
        from evolkit.models.decode import ContinuousDecoder, PrefixStore, supports_slots

        # Models with sliding-window or linear-attention layers keep their cache their own
        # way; they fall back to the static path, which transformers handles for them.
        if scheduler == "continuous" and not supports_slots(self.model):
            scheduler = "static"
        self.scheduler = scheduler
        self.prefix_reuse = prefix_reuse and scheduler == "continuous"
        store = PrefixStore(int(prefix_cache_mb * 2**20)) if self.prefix_reuse else None
        self._decoder: Any = ContinuousDecoder(
            self.model, self._eos, self.tokenizer.pad_token_id, self.batch_size, store
        )

    @property
    def decode_stats(self) -> Any:
        """What the continuous decoder did so far (`evolkit.models.decode.DecodeStats`)."""
        return self._decoder.stats

    @functools.cached_property
    def cache_id(self) -> str:
        """`model_id@fingerprint` of the loaded folder, so two folders that share a last name
        (`a/final`, `b/final`) or a checkpoint retrained in place never share cache entries.
        Computed once, at the first call, so later edits of the folder do not relabel the
        weights this instance already holds."""
        return local_cache_id(self.model_id, self.model.name_or_path)

    # -- prompts -----------------------------------------------------------------------------
    def render(self, request: ChatRequest) -> str:
        """The exact text the model continues: chat template plus the assistant prefill."""
        return render_prompt(self.tokenizer, request)

    # -- generation --------------------------------------------------------------------------
    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        from evolkit.models.decode import DecodeRow

        t0 = time.perf_counter()
        results: list[Generation | None] = [None] * len(requests)
        todo: list[int] = []
        rows: list[DecodeRow] = []
        for i, req in enumerate(requests):
            ids = list(self.tokenizer(self.render(req), add_special_tokens=False)["input_ids"])
            if not ids:
                results[i] = Generation(
                    text="", finish_reason="error", error="empty prompt: nothing to continue"
                )
                continue
            todo.append(i)
            rows.append(DecodeRow(ids, req.params, req.sampling_seed()))
        if rows:
            with self._torch.inference_mode():
                if self.scheduler == "continuous":
                    self._decoder.max_rows = self.batch_size
                    outs = self._decoder.run(rows)
                else:
                    outs = self._static(rows)
            for i, row, out in zip(todo, rows, outs, strict=True):
                results[i] = self._generation(out, len(row.ids))
        gens = [g if g is not None else Generation(text="", finish_reason="error") for g in results]
        for g in gens:
            self.usage.add(g)
        self.usage.seconds += time.perf_counter() - t0
        return gens

    def _generation(self, out: Any, prompt_tokens: int) -> Generation:
        """A decoded row as a Generation; the stop token is not part of the text or the count,
        but keeps its place in the per-token lists (its probability says how sure the stop was)."""
        n = len(out.ids) - (1 if out.finish == "stop" else 0)
        gen = Generation(
            text=str(self.tokenizer.decode(out.ids[:n], skip_special_tokens=True)),
            finish_reason=out.finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=n,
        )
        if out.logprobs is not None:
            gen.tokens = [self._token_text(t) for t in out.ids]
            gen.token_logprobs = list(out.logprobs)
        if out.top is not None:
            gen.top_logprobs = [[(self._token_text(t), lp) for t, lp in pos] for pos in out.top]
        return gen

    def _token_text(self, token: int) -> str:
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = str(self.tokenizer.decode([token]))
        return text

    # -- the static path ---------------------------------------------------------------------
    def _static(self, rows: Sequence[Any]) -> list[Any]:
        """Length-sorted batches of rows with the same parameters through `model.generate`."""
        from evolkit.models.decode import RowOutput

        results: list[Any] = [None] * len(rows)
        groups: dict[SamplingParams, list[int]] = {}
        for i, row in enumerate(rows):
            if row.params.max_new_tokens <= 0:
                results[i] = RowOutput([], "length")
            else:
                groups.setdefault(row.params, []).append(i)
        for params, idxs in groups.items():
            idxs.sort(key=lambda i: len(rows[i].ids))
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start : start + self.batch_size]
                outs = self._static_batch([rows[i] for i in chunk], params)
                for i, out in zip(chunk, outs, strict=True):
                    results[i] = out
        return results

    def _static_batch(self, batch: list[Any], params: SamplingParams) -> list[Any]:
        from transformers import LogitsProcessorList

        from evolkit.models.decode import ChoiceProcessor, RowOutput, RowSampler

        torch = self._torch
        width = max(len(row.ids) for row in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in batch])
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in batch])
        samplers = [RowSampler(r.params, r.seed, r.ids) for r in batch]
        plain = params.greedy and samplers[0].penalty is None and not params.logprobs
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=sorted(self._eos) or None,
            # The samplers choose every token (per-row parameters and seeds); `generate` only
            # takes the one token they leave standing. Plain greedy rows need no help.
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=1.0,
            logits_processor=LogitsProcessorList(
                [] if plain else [ChoiceProcessor(samplers, self._eos)]
            ),
        )
        outs: list[Any] = []
        for row, ids in enumerate(out[:, width:].tolist()):
            n, finish = len(ids), "length"
            for j, t in enumerate(ids):
                if t in self._eos:
                    n, finish = j + 1, "stop"
                    break
            sampler = samplers[row]
            outs.append(RowOutput(ids[:n], finish, sampler.logprobs, sampler.top))
        return outs


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, tok.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids
