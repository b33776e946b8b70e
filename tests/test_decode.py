"""The local decode loop: per-request sampling, continuous batching and shared-prefix reuse.

Most tests use a "peaked" tiny model: the shared tiny model's random weights give near-uniform
logits, where float noise between batch shapes could flip an arg-max between near-equal
tokens. Scaling the output layer makes the model prefer a few tokens per step (still varied),
and tying the stop token to a frequent token's row makes rows stop at different lengths, which
is what continuous batching has to handle.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from evolkit.models.base import ChatRequest, Generation, SamplingParams
from tests.conftest import save_tiny_model

torch = pytest.importorskip("torch")

PROMPTS = [
    "Hi",
    "Write a long story about a dragon who collects teacups from every kingdom.",
    "List two colors.",
    "What is the capital of France, and why did it become the capital?",
    "Explain gravity.",
]
INSTRUCTIONS = [
    "Why do leaves change color?",
    "Plan a picnic.",
    "What is inflation?",
    "Name three rivers.",
]

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=14)
SAMPLED = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=14, seed=7)
PENALISED = SamplingParams(temperature=1.3, max_new_tokens=14, seed=3, repetition_penalty=1.4)


@pytest.fixture(scope="module")
def peaked_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def peak(model: Any, tok: Any) -> None:
        model.lm_head.weight.mul_(5.0)
        frequent = tok.encode(" fractional", add_special_tokens=False)[0]
        model.lm_head.weight[tok.eos_token_id] = 1.1 * model.lm_head.weight[frequent]

    return save_tiny_model(
        tmp_path_factory.mktemp("peaked-model"),
        tiny_model_dir,
        shape=peak,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )


def backend(path: Path, **kwargs):
    from evolkit.models.local import LocalBackend

    return LocalBackend(str(path), **kwargs)


@pytest.fixture(scope="module")
def peaked(peaked_dir: Path):
    return backend(peaked_dir, batch_size=3)


def chats(params: SamplingParams, prompts: list[str] = PROMPTS) -> list[ChatRequest]:
    return [ChatRequest.of([{"role": "user", "content": p}], params) for p in prompts]


def evolve_like(params: SamplingParams, ops: tuple[str, ...] = ("deepen", "breadth")):
    from evolkit.stages.evolve import build_messages

    return [ChatRequest.of(build_messages(op, i), params) for op in ops for i in INSTRUCTIONS]


def summary(gens: list[Generation]) -> list[tuple[str, str, int]]:
    return [(g.text, g.finish_reason, g.completion_tokens) for g in gens]


# -- sampling rule ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, repetition_penalty=1.3),
        SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.3),
        SamplingParams(temperature=1.0, top_p=0.5),
        SamplingParams(temperature=0.5),
    ],
)
def test_sampler_scores_equal_transformers_processors(params: SamplingParams) -> None:
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    from evolkit.models.decode import RowSampler

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1000, generator=gen) * 3
    history = [5, 17, 17, 999, 3]
    ours = RowSampler(params, seed=0, prompt_ids=history).process(logits)
    ids = torch.tensor([history])
    theirs = logits[None].clone()
    if params.repetition_penalty is not None:
        theirs = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, theirs)
    if not params.greedy:
        if params.temperature != 1.0:
            theirs = TemperatureLogitsWarper(params.temperature)(ids, theirs)
        if params.top_p < 1.0:
            theirs = TopPLogitsWarper(params.top_p)(ids, theirs)
    assert torch.equal(ours, theirs[0])


def test_sampler_draws_only_kept_tokens_and_follows_its_seed() -> None:
    from evolkit.models.decode import RowSampler

    logits = torch.randn(500, generator=torch.Generator().manual_seed(2)) * 2
    params = SamplingParams(temperature=1.0, top_p=0.6)
    kept = torch.isfinite(RowSampler(params, 0, []).process(logits))
    draws = [RowSampler(params, seed, []).choose(logits) for seed in range(40)]
    assert all(bool(kept[t]) for t in draws)
    assert len(set(draws)) > 1
    assert draws == [RowSampler(params, seed, []).choose(logits) for seed in range(40)]


# -- results never depend on batching ------------------------------------------------------------
@pytest.mark.parametrize("params", [GREEDY, SAMPLED, PENALISED], ids=["greedy", "sampled", "pen"])
def test_alone_in_a_batch_and_shuffled_give_the_same_text(peaked, params) -> None:
    requests = chats(params)
    alone = [peaked.generate([r])[0] for r in requests]
    together = peaked.generate(requests)
    order = list(range(len(requests)))
    random.Random(0).shuffle(order)
    shuffled = peaked.generate([requests[i] for i in order])
    unshuffled = [shuffled[order.index(i)] for i in range(len(requests))]
    assert summary(together) == summary(alone)
    assert summary(unshuffled) == summary(alone)
    assert len({g.text for g in alone}) > 1


def test_sampling_depends_on_the_seed(peaked) -> None:
    a = peaked.generate(chats(SAMPLED))
    b = peaked.generate(chats(SamplingParams(**{**SAMPLED.__dict__, "seed": 8})))
    assert [g.text for g in a] != [g.text for g in b]


def test_greedy_equals_transformers_generate_one_at_a_time(peaked) -> None:
    requests = chats(GREEDY) + evolve_like(GREEDY)
    ours = peaked.generate(requests)
    model, tok = peaked.model, peaked.tokenizer
    eos = tok.eos_token_id
    for req, gen in zip(requests, ours, strict=True):
        ids = tok(peaked.render(req), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                ids, max_new_tokens=GREEDY.max_new_tokens, do_sample=False, pad_token_id=eos
            )
        new = out[0, ids.shape[1] :].tolist()
        if eos in new:
            new = new[: new.index(eos)]
        assert gen.text == tok.decode(new, skip_special_tokens=True)
        assert gen.completion_tokens == len(new)


def test_mixed_parameters_share_the_running_batch(peaked_dir: Path) -> None:
    b = backend(peaked_dir, batch_size=4)
    mixed = [
        ChatRequest.of([{"role": "user", "content": p}], params)
        for p, params in zip(
            PROMPTS,
            [GREEDY, SAMPLED, PENALISED, SamplingParams(max_new_tokens=3), SAMPLED],
            strict=True,
        )
    ]
    alone = [b.generate([r])[0] for r in mixed]
    before = b.decode_stats.max_running
    assert before == 1
    assert summary(b.generate(mixed)) == summary(alone)
    assert b.decode_stats.max_running > 1


def test_static_scheduler_gives_the_same_rows(peaked_dir: Path, peaked) -> None:
    static = backend(peaked_dir, batch_size=3, scheduler="static")
    assert static.scheduler == "static"
    for params in (GREEDY, SAMPLED, PENALISED):
        requests = chats(params) + evolve_like(params, ("deepen",))
        assert summary(static.generate(requests)) == summary(peaked.generate(requests))


# -- continuous batching -------------------------------------------------------------------------
def test_finished_rows_hand_their_slot_to_waiting_rows(peaked_dir: Path) -> None:
    """Two slots: one long row (6 tokens) and four short ones (2 tokens each). With slot refill
    the short rows pass through the second slot while the long one runs: 5 one-token steps
    after the prefills. A batch that waited for its longest row would need 7."""
    b = backend(peaked_dir, batch_size=2, prefix_reuse=False)
    long = ChatRequest.of([{"role": "user", "content": "Hi"}], SamplingParams(max_new_tokens=6))
    shorts = chats(SamplingParams(max_new_tokens=2), ["Hi!!", "Hello there", "Hey you all", "Yo"])
    gens = b.generate([long, *shorts])
    # The check below only means something if every row ran to its cap.
    assert [g.completion_tokens for g in gens] == [6, 2, 2, 2, 2]
    assert b.decode_stats.max_running == 2
    assert b.decode_stats.steps == 5


def test_batch_size_bounds_the_running_rows(peaked_dir: Path) -> None:
    for size in (1, 2, 5):
        b = backend(peaked_dir, batch_size=size)
        b.generate(chats(GREEDY) + evolve_like(GREEDY))
        assert 1 <= b.decode_stats.max_running <= size


# -- shared-prefix reuse -------------------------------------------------------------------------
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_prefix_reuse_gives_the_same_rows_and_saves_prefill(peaked_dir: Path, params) -> None:
    reuse = backend(peaked_dir, batch_size=3)
    plain = backend(peaked_dir, batch_size=3, prefix_reuse=False)
    requests = evolve_like(params) + chats(params, PROMPTS[:2])
    assert summary(reuse.generate(requests)) == summary(plain.generate(requests))
    assert plain.decode_stats.prefill_saved == 0
    stats = reuse.decode_stats
    assert stats.prefill_tokens < stats.prompt_tokens / 3
    assert stats.prefill_saved == stats.prompt_tokens - stats.prefill_tokens


def test_prefixes_are_kept_across_calls(peaked_dir: Path) -> None:
    from evolkit.stages.evolve import build_messages

    reuse = backend(peaked_dir, batch_size=4)
    plain = backend(peaked_dir, batch_size=4, prefix_reuse=False)
    reuse.generate(evolve_like(GREEDY, ("deepen",)))
    first = reuse.decode_stats.prefill_tokens
    hits = reuse.decode_stats.prefix_hits
    later = [
        ChatRequest.of(build_messages("deepen", "How do bees make honey?"), GREEDY),
        ChatRequest.of(build_messages("deepen", "Describe a storm."), GREEDY),
    ]
    single = [ChatRequest.of(build_messages("deepen", "Why is the sky blue?"), GREEDY)]
    for requests in (later, single):
        before = reuse.decode_stats.prefill_tokens
        prompt_before = reuse.decode_stats.prompt_tokens
        assert summary(reuse.generate(requests)) == summary(plain.generate(requests))
        computed = reuse.decode_stats.prefill_tokens - before
        sent = reuse.decode_stats.prompt_tokens - prompt_before
        assert computed < sent / 4  # only the rows' own tails ran
    assert reuse.decode_stats.prefix_hits >= hits + 2
    assert first > 0


def test_prefix_cache_size_bounds_what_is_kept(peaked_dir: Path) -> None:
    none_kept = backend(peaked_dir, batch_size=4, prefix_cache_mb=0)
    none_kept.generate(evolve_like(GREEDY))
    assert none_kept.decode_stats.prefill_saved > 0  # shared within the call all the same
    assert none_kept._decoder.store.entries == {}


def test_prefix_store_evicts_least_recently_used() -> None:
    from evolkit.models.decode import PrefixStore

    def kv(n: int):
        return [(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4))]

    one = 2 * 10 * 4 * 4  # bytes of kv(10)
    store = PrefixStore(max_bytes=2 * one)
    store.put([1, 2, 3], kv(10))
    store.put([4, 5, 6], kv(10))
    assert store.best([1, 2, 9])[1] == 2  # touches [1, 2, 3]
    store.put([7, 8, 9], kv(10))
    assert set(store.entries) == {(1, 2, 3), (7, 8, 9)}
    assert store.bytes <= store.max_bytes
    store.put([1, 1, 1], kv(30))  # larger than the whole bound: not kept
    assert (1, 1, 1) not in store.entries


def test_plan_groups_splits_by_operation_and_leaves_each_row_a_token() -> None:
    from evolkit.models.decode import plan_groups

    head = list(range(100, 140))
    a = [
        [*head, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, x]
        for x in (50, 51, 52)
    ]
    b = [[*head, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, x] for x in (60, 61)]
    lone = [[7, 7, 7]]
    prompts = a + b + lone
    groups = plan_groups(prompts, min_prefix=16)
    by_member = {tuple(sorted(m)): size for size, m in groups}
    # One group of the first five rows at their 40 shared tokens would save (5 - 1) * 40 = 160
    # prefill tokens; two groups at 60 save (3 - 1) * 60 + (2 - 1) * 60 = 180.
    assert by_member == {(0, 1, 2): 60, (3, 4): 60, (5,): 0}
    assert plan_groups([[*head, 5], [*head, 5]], min_prefix=16) == [(40, [0, 1])]
    assert sorted(i for _, m in groups for i in m) == list(range(len(prompts)))


# -- logprobs --------------------------------------------------------------------------------------
def teacher_forced(b, request: ChatRequest, generated: list[int]) -> torch.Tensor:
    """Raw log-probabilities of the whole vocabulary at each generated position."""
    prompt = b.tokenizer(b.render(request), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + generated])
    with torch.inference_mode():
        logits = b.model(input_ids=ids).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
@pytest.mark.parametrize("params", [GREEDY, PENALISED], ids=["greedy", "pen"])
def test_logprobs_tokens_and_top_alternatives(peaked_dir: Path, scheduler, params) -> None:
    b = backend(peaked_dir, batch_size=2, scheduler=scheduler)
    params = SamplingParams(**{**params.__dict__, "logprobs": True, "top_logprobs": 3})
    requests = chats(params)
    decoded = []  # the token ids behind each generation, as the backend saw them
    build = b._generation
    b._generation = lambda out, n: (decoded.append(out.ids), build(out, n))[1]
    gens = b.generate(requests)
    eos_text = b.tokenizer.decode([b.tokenizer.eos_token_id])
    if params.greedy:
        assert {g.finish_reason for g in gens} == {"stop", "length"}
    for req, gen, ids in zip(requests, gens, decoded, strict=True):
        assert gen.tokens is not None and gen.token_logprobs is not None
        assert gen.top_logprobs is not None
        n = gen.completion_tokens + (1 if gen.finish_reason == "stop" else 0)
        assert len(ids) == len(gen.tokens) == len(gen.token_logprobs) == len(gen.top_logprobs) == n
        assert gen.tokens == [b.tokenizer.decode([i]) for i in ids]
        if gen.finish_reason == "stop":
            assert gen.tokens[-1] == eos_text
        text = b.tokenizer.decode(ids[: gen.completion_tokens], skip_special_tokens=True)
        assert text == gen.text
        raw = teacher_forced(b, req, ids)
        for j, (tok_id, lp, top) in enumerate(
            zip(ids, gen.token_logprobs, gen.top_logprobs, strict=True)
        ):
            assert math.isclose(lp, float(raw[j, tok_id]), abs_tol=1e-4)
            assert len(top) == 3
            assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
            assert math.isclose(top[0][1], float(raw[j].max()), abs_tol=1e-4)
            if params.greedy and params.repetition_penalty is None:
                assert top[0][0] == gen.tokens[j]  # greedy picks the top-1
                assert math.isclose(top[0][1], lp, abs_tol=1e-6)


# -- settings and edges ----------------------------------------------------------------------------
def test_unknown_scheduler_is_one_clear_error(peaked_dir: Path) -> None:
    from evolkit.errors import BackendError

    with pytest.raises(BackendError, match="unknown scheduler 'fast'"):
        backend(peaked_dir, scheduler="fast")


def test_sliding_window_models_fall_back_to_the_static_path(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    save_tiny_model(
        tmp_path,
        tiny_model_dir,
        MistralConfig,
        MistralForCausalLM,
        sliding_window=64,
    )
    b = backend(tmp_path, batch_size=2)
    assert b.scheduler == "static"
    gens = b.generate(chats(SamplingParams(max_new_tokens=3)))
    assert all(g.finish_reason in ("stop", "length") for g in gens)


def test_zero_new_tokens_and_empty_prompts(peaked) -> None:
    zero = chats(SamplingParams(max_new_tokens=0), ["Hi"])[0]
    empty = ChatRequest(messages=(), params=GREEDY, prompt="")
    raw = ChatRequest(messages=(), params=GREEDY, prompt="Once upon a time")
    gens = peaked.generate([zero, empty, raw])
    assert (gens[0].text, gens[0].finish_reason, gens[0].completion_tokens) == ("", "length", 0)
    assert gens[1].finish_reason == "error" and "empty prompt" in gens[1].error
    assert gens[2].finish_reason in ("stop", "length") and gens[2].prompt_tokens == 4


@pytest.mark.slow
def test_embedded_model_continuous_with_prefixes_equals_one_at_a_time(embedded_dir: Path) -> None:
    from evolkit.models.local import LocalBackend

    fast = LocalBackend("embedded", batch_size=3)
    base = LocalBackend("embedded", batch_size=1, scheduler="static")
    for params in (
        SamplingParams(max_new_tokens=12),
        SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=12, seed=1),
    ):
        requests = evolve_like(params, ("deepen", "concretize"))[:6]
        one_by_one = [base.generate([r])[0] for r in requests]
        assert summary(fast.generate(requests)) == summary(one_by_one)
    assert fast.decode_stats.prefill_saved > fast.decode_stats.prompt_tokens / 2
