"""Local transformers backend: batched, length-sorted, left-padded generation on CPU or GPU.

Sorting prompts by length before batching keeps padding small; left padding lets a whole batch
decode together. fp32 on CPU because bf16 matrix products ran ~100x slower on these CPUs.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evolkit.errors import BackendError
from evolkit.models.base import Backend, ChatRequest, Generation, SamplingParams
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


class LocalBackend(Backend):
    """A Hugging Face causal LM loaded in-process."""

    def __init__(
        self,
        model: str = EMBEDDED_NAME,
        batch_size: int = 16,
        device: str | None = None,
        dtype: str = "auto",
    ) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

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
        if request.prompt is not None:
            return request.prompt
        tok = self.tokenizer
        messages = request.message_dicts()
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
            text += "Assistant: "
        return str(text) + request.prefill

    # -- generation --------------------------------------------------------------------------
    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        texts = [self.render(r) for r in requests]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        # Group by sampling parameters (they apply per generate call), then by length.
        groups: dict[SamplingParams, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.params, []).append(i)
        for params, idxs in groups.items():
            idxs.sort(key=lambda i: len(encoded[i]))
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start : start + self.batch_size]
                for i, gen in zip(
                    chunk, self._generate_batch([encoded[i] for i in chunk], params), strict=True
                ):
                    results[i] = gen
        out = [g if g is not None else Generation(text="", finish_reason="error") for g in results]
        for g in out:
            self.usage.add(g)
        return out

    def _generate_batch(self, batch: list[list[int]], params: SamplingParams) -> list[Generation]:
        torch = self._torch
        tok = self.tokenizer
        t0 = time.perf_counter()
        width = max(len(ids) for ids in batch)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": pad,
            "return_dict_in_generate": True,
            "output_scores": params.logprobs,
        }
        if params.repetition_penalty not in (None, 1.0):
            kwargs["repetition_penalty"] = params.repetition_penalty
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            kwargs["top_k"] = None
            # One seed per batch, derived from the run seed and the batch's prompts, so a
            # rerun of the same batch samples the same tokens.
            digest = hashlib.sha256(repr((params.seed, batch)).encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little") % (2**63))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
            )
        seqs = out.sequences[:, width:].tolist()
        eos_ids = _eos_ids(self.model, tok)
        gens: list[Generation] = []
        for row, ids in enumerate(seqs):
            n = len(ids)
            finish = "length"
            for j, t in enumerate(ids):
                if t in eos_ids:
                    n, finish = j, "stop"
                    break
            logprobs = None
            if params.logprobs and out.scores is not None:
                logprobs = [
                    float(torch.log_softmax(out.scores[j][row].float(), -1).max())
                    for j in range(min(n + (1 if finish == "stop" else 0), len(out.scores)))
                ]
            text = str(tok.decode(ids[:n], skip_special_tokens=True))
            gens.append(
                Generation(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=len(batch[row]),
                    completion_tokens=n,
                    token_logprobs=logprobs,
                )
            )
        self.usage.seconds += time.perf_counter() - t0
        return gens


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, tok.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids
