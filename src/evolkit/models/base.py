"""One interface for every model backend: chat generation now, loss scoring for the scorer role.

A backend knows nothing of stages or records: it gets requests, it returns generations.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """Everything that changes what a model writes; part of the cache key."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    # None = not set: the backend's own behaviour (no penalty locally, nothing sent over HTTP,
    # since the official OpenAI API rejects the field). Tiny models loop ("a gentle rain, a
    # gentle rain, ..."); a mild penalty on the responder keeps their answers from running into
    # the token limit.
    repetition_penalty: float | None = None
    # Return the log-probability of each generated token (of the model's raw distribution,
    # before temperature, top-p or penalties), and the `top_logprobs` most likely alternatives.
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class ChatRequest:
    """A chat conversation to continue. `prefill` starts the assistant's reply for it."""

    messages: tuple[tuple[str, str], ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    prefill: str = ""
    # A raw text prompt continued as it is, with no chat template (`/v1/completions`); when set,
    # `messages` and `prefill` are ignored.
    prompt: str | None = None

    @classmethod
    def of(
        cls, messages: Sequence[Message], params: SamplingParams, prefill: str = ""
    ) -> ChatRequest:
        return cls(tuple((m["role"], m["content"]) for m in messages), params, prefill)

    def message_dicts(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self, model_id: str) -> str:
        """The cache key: model identity, conversation, prefill and sampling parameters."""
        payload = json.dumps(
            [model_id, self.messages, self.prefill, self.prompt, asdict(self.params)],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def sampling_seed(self) -> int:
        """The seed this request samples with: its own content plus the run seed in `params`.

        It depends on nothing else (not the model, not its batch-mates), so a row samples the
        same tokens whatever batch or worker it lands in.
        """
        digest = hashlib.sha256(self.key("").encode("ascii")).digest()
        return int.from_bytes(digest[:8], "little") % (2**63)


def render_prompt(tokenizer: Any, request: ChatRequest) -> str:
    """The exact text an in-process model continues: the request's raw prompt, or its
    messages through the tokenizer's chat template (a plain "Role: text" layout when the
    tokenizer has none), plus the assistant prefill. One rule for every local engine
    (transformers, vLLM), so a request means the same text on each."""
    if request.prompt is not None:
        return request.prompt
    messages = request.message_dicts()
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
        text += "Assistant: "
    return str(text) + request.prefill


@dataclass
class Generation:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # With SamplingParams.logprobs: per generated token, its text, its log-probability, and
    # (with top_logprobs > 0) the most likely alternatives as (text, log-probability) pairs.
    tokens: list[str] | None = None
    token_logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[str, float]]] | None = None
    cached: bool = False
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        return d


@dataclass
class Usage:
    """Counts a backend accumulates so summaries can report tokens and throughput."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    # Retried calls by cause ("429", "5xx", "timeout", "connection", ...), for progress lines and
    # summaries: a run that succeeded only after many retries should say so.
    retries: dict[str, int] = field(default_factory=dict)

    def add(self, gen: Generation) -> None:
        self.requests += 1
        if gen.cached:
            self.cached += 1
        else:
            self.prompt_tokens += gen.prompt_tokens
            self.completion_tokens += gen.completion_tokens


class Backend(ABC):
    """A model that serves generate (and, where it can, score) calls."""

    #: The name recorded in rows (`evolver`, `meta.response.model`).
    model_id: str = "unknown"

    @property
    def cache_id(self) -> str:
        """What the call cache keys this model by: it must change whenever the weights do
        (a local folder's fingerprint, an HTTP server's URL + model name)."""
        return self.model_id

    def __init__(self) -> None:
        self.usage = Usage()

    @abstractmethod
    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        """Answer each request, in order. Failures come back as finish_reason 'error'."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or memory."""
