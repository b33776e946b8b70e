"""Local transformers backend mechanics on a tiny random model (fast) and the embedded one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evolkit.models.base import ChatRequest, SamplingParams

pytest.importorskip("torch")

PROMPTS = [
    "Hi",
    "Write a long story about a dragon who collects teacups from every kingdom.",
    "List two colors.",
    "What is the capital of France, and why did it become the capital?",
    "Explain gravity.",
]


def reqs(params: SamplingParams, prompts: list[str] = PROMPTS) -> list[ChatRequest]:
    return [ChatRequest.of([{"role": "user", "content": p}], params) for p in prompts]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from evolkit.models.local import LocalBackend

    return LocalBackend(str(tiny_model_dir), batch_size=4)


def test_batched_greedy_equals_one_at_a_time(tiny) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    batched = tiny.generate(reqs(params))
    single = [tiny.generate([r])[0] for r in reqs(params)]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]


def test_order_finish_reason_and_counts(tiny) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=5)
    gens = tiny.generate(reqs(params))
    assert len(gens) == len(PROMPTS)
    for prompt, gen in zip(PROMPTS, gens, strict=True):
        assert gen.finish_reason in ("stop", "length")
        assert gen.completion_tokens <= 5
        assert gen.prompt_tokens > len(prompt.split())  # chat template tokens included
        if gen.finish_reason == "length":
            assert gen.completion_tokens == 5
    assert tiny.usage.requests >= len(PROMPTS)


def test_sampling_is_seeded(tiny) -> None:
    p1 = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1)
    p2 = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=2)
    a = [g.text for g in tiny.generate(reqs(p1))]
    b = [g.text for g in tiny.generate(reqs(p1))]
    c = [g.text for g in tiny.generate(reqs(p2))]
    assert a == b
    assert a != c


def test_logprobs_are_top1_per_generated_token(tiny) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=6, logprobs=True)
    for gen in tiny.generate(reqs(params)):
        assert gen.token_logprobs is not None
        n = gen.completion_tokens + (1 if gen.finish_reason == "stop" else 0)
        assert len(gen.token_logprobs) == n
        assert all(lp <= 0.0 and math.isfinite(lp) for lp in gen.token_logprobs)


def test_prefill_is_continued_not_repeated(tiny) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=4)
    plain = ChatRequest.of([{"role": "user", "content": "Hi"}], params)
    pre = ChatRequest.of([{"role": "user", "content": "Hi"}], params, prefill="Hello there")
    assert tiny.render(pre) == tiny.render(plain) + "Hello there"


def test_missing_model_is_one_clear_error(tmp_path: Path) -> None:
    from evolkit.errors import BackendError
    from evolkit.models.local import LocalBackend

    with pytest.raises(BackendError, match=r"no config\.json"):
        LocalBackend(str(tmp_path))


@pytest.mark.slow
def test_embedded_model_answers(embedded_dir: Path) -> None:
    from evolkit.models.local import LocalBackend

    backend = LocalBackend("embedded")
    assert backend.model_id == "smollm2-135m-instruct"
    gen = backend.generate(reqs(SamplingParams(max_new_tokens=16), ["What is 2 + 2?"]))[0]
    assert "4" in gen.text
