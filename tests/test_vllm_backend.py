"""The vLLM backend and scorer without a GPU: request building and output mapping.

There is no GPU here, so no real vLLM engine runs. The engine (``vllm.LLM``) is faked at its
boundary by ``FakeLLM``, which computes with the tiny random transformers model: it generates
(greedy or seeded sampling) and returns vLLM-shaped log-probabilities and prompt
log-probabilities, so the backend's mapping and the scorer's span sums are checked against
numbers computed independently here. The data classes on both sides of that boundary
(SamplingParams, TokensPrompt, RequestOutput, CompletionOutput, Logprob) are vLLM's own where
they import without CUDA (the ``real`` cases: vLLM importable, or its wheel on
``$EVOLKIT_VLLM_SITE``, see below) and look-alikes otherwise (the ``fake`` cases, always run).

vLLM's wheel requires a CUDA torch; to test against its classes on a CPU machine, install it
beside the project, leaving the project's torch alone, and point the tests at it:

    pip install --no-deps --target /tmp/vllm-site vllm==0.33.0
    pip install --no-deps --target /tmp/vllm-deps msgspec cbor2 pyzmq aiohttp openai-harmony \
        pybase64 cachetools uvloop py-cpuinfo prometheus_client
    EVOLKIT_VLLM_SITE=/tmp/vllm-site:/tmp/vllm-deps pytest tests/test_vllm_backend.py

The tests named ``test_gpu_*`` need CUDA and a real vLLM; they skip elsewhere.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import evolkit.models.vllm as vmod  # noqa: E402
from evolkit.errors import BackendError, EvolkitError  # noqa: E402
from evolkit.models import BackendFactory, ModelSpec  # noqa: E402
from evolkit.models.base import ChatRequest, Generation, SamplingParams  # noqa: E402
from evolkit.models.scoring import LossScorer, ScoreItem  # noqa: E402
from evolkit.models.vllm import VLLMApi, VLLMBackend, VLLMScorer  # noqa: E402

LOSSES = ("loss_q", "loss_a_given_q", "loss_a")
INSTALL = "pip install 'evolkit[vllm]'"


# -- vLLM's classes, or look-alikes --------------------------------------------------------------


@dataclass
class FakeSamplingParams:
    """The fields of vllm.SamplingParams that matter here, with vLLM's defaults."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None


def fake_tokens_prompt(prompt_token_ids: list[int]) -> dict[str, Any]:
    return {"prompt_token_ids": prompt_token_ids}


@dataclass
class FakeLogprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FakeCompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Any]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list[dict[int, Any] | None] | None
    outputs: list[Any]
    finished: bool


@dataclass(frozen=True)
class Api:
    kind: str
    SamplingParams: Any
    TokensPrompt: Any
    Logprob: Any
    CompletionOutput: Any
    RequestOutput: Any


FAKE_API = Api(
    "fake", FakeSamplingParams, fake_tokens_prompt, FakeLogprob, FakeCompletionOutput,
    FakeRequestOutput,
)  # fmt: skip


@functools.cache
def real_api() -> Api | None:
    """vLLM's own classes, if they import here (with $EVOLKIT_VLLM_SITE on sys.path)."""
    for folder in os.environ.get("EVOLKIT_VLLM_SITE", "").split(os.pathsep):
        if folder and folder not in sys.path:
            sys.path.append(folder)
    try:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.outputs import CompletionOutput, RequestOutput

        try:
            from vllm.logprobs import Logprob
        except ImportError:  # vLLM before 0.11 kept it here
            from vllm.sequence import Logprob  # type: ignore[no-redef,attr-defined]
    except Exception:
        return None
    return Api("real", VSamplingParams, TokensPrompt, Logprob, CompletionOutput, RequestOutput)


@pytest.fixture(params=["fake", "real"])
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Api:
    if request.param == "real":
        got = real_api()
        if got is None:
            pytest.skip("vLLM's classes do not import here (set EVOLKIT_VLLM_SITE, see above)")
        return got
    monkeypatch.setattr(
        vmod, "_vllm_api", lambda: VLLMApi(FAKE_API.SamplingParams, FAKE_API.TokensPrompt)
    )
    return FAKE_API


# -- the fake engine -----------------------------------------------------------------------------


class FakeLLM:
    """``vllm.LLM``'s generate/get_tokenizer, computed with a small transformers model.

    It returns what vLLM returns: per generated token a {token id: Logprob} dict holding the
    ``logprobs`` most likely tokens plus the chosen one (with its true rank), and per prompt
    token a dict with its own log-probability (None for the first). Log-probabilities are of
    the raw distribution, as vLLM's default ``raw_logprobs`` mode gives them.
    """

    def __init__(self, model: Any, tokenizer: Any, api: Api, max_model_len: int = 4096) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.api = api
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_model_len))
        self.max_model_len = max_model_len
        self.calls: list[tuple[list[Any], list[Any]]] = []
        self.outputs: list[Any] = []
        self.script: Callable[[list[int], Any], Any] | None = None

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: Any, sampling_params: Any, use_tqdm: bool = True) -> list[Any]:
        assert use_tqdm is False, "evolkit shows its own progress"
        prompts = list(prompts)
        sps = (
            list(sampling_params)
            if isinstance(sampling_params, list)
            else [sampling_params] * len(prompts)
        )
        assert len(sps) == len(prompts)
        self.calls.append((prompts, sps))
        outs = []
        for i, (prompt, sp) in enumerate(zip(prompts, sps, strict=True)):
            ids = list(prompt["prompt_token_ids"])
            assert 0 < len(ids) < self.max_model_len, "vLLM would reject this prompt"
            plp = None
            if sp.prompt_logprobs is not None:
                plp = self._prompt_logprobs(ids, sp.prompt_logprobs)
            comp = self.script(ids, sp) if self.script else self._complete(ids, sp)
            outs.append(
                self.api.RequestOutput(
                    request_id=str(i),
                    prompt=None,
                    prompt_token_ids=ids,
                    prompt_logprobs=plp,
                    outputs=[comp],
                    finished=True,
                )
            )
        self.outputs.extend(outs)
        return outs

    def _raw(self, ids: list[int]) -> Any:
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        return logits, logits.log_softmax(-1)

    def entries(self, row: Any, chosen: int, k: int) -> dict[int, Any]:
        """vLLM's order: the chosen token first, then the top k (once if it is among them)."""
        rank = int((row > row[chosen]).sum()) + 1
        out = {chosen: self.api.Logprob(logprob=float(row[chosen]), rank=rank, decoded_token="x")}
        if k > 0:
            values, idx = torch.topk(row, k)
            for r, (v, t) in enumerate(zip(values.tolist(), idx.tolist(), strict=True), start=1):
                out.setdefault(
                    int(t), self.api.Logprob(logprob=float(v), rank=r, decoded_token="x")
                )
        return out

    def _prompt_logprobs(self, ids: list[int], k: int) -> list[dict[int, Any] | None]:
        _, lp = self._raw(ids)
        return [None] + [self.entries(lp[t - 1], ids[t], k) for t in range(1, len(ids))]

    def _complete(self, ids: list[int], sp: Any) -> Any:
        gen: list[int] = []
        lps: list[dict[int, Any]] | None = [] if sp.logprobs is not None else None
        rng = torch.Generator().manual_seed(sp.seed) if sp.seed is not None else None
        finish = "length"
        for _ in range(sp.max_tokens):
            logits, lp = self._raw(ids + gen)
            logits, lp = logits[-1].clone(), lp[-1]
            if sp.repetition_penalty != 1.0:
                for t in set(ids + gen):
                    v = logits[t]
                    logits[t] = v * sp.repetition_penalty if v < 0 else v / sp.repetition_penalty
            if sp.temperature == 0:
                tok = int(logits.argmax())
            else:
                probs = (logits / sp.temperature).softmax(-1)
                tok = int(torch.multinomial(probs, 1, generator=rng))
            gen.append(tok)
            if lps is not None:
                lps.append(self.entries(lp, tok, sp.logprobs))
            if tok == self.tokenizer.eos_token_id:
                finish = "stop"
                break
        return self.api.CompletionOutput(
            index=0,
            text=self.tokenizer.decode(gen, skip_special_tokens=True),
            token_ids=gen,
            cumulative_logprob=None,
            logprobs=lps,
            finish_reason=finish,
            stop_reason=None,
        )


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[tuple[Any, Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    yield model, tok
    torch.set_num_threads(threads)


@pytest.fixture
def fake_llm(tiny: tuple[Any, Any], api: Api) -> FakeLLM:
    return FakeLLM(tiny[0], tiny[1], api)


@pytest.fixture
def backend(fake_llm: FakeLLM, tiny_model_dir: Path) -> VLLMBackend:
    return VLLMBackend(str(tiny_model_dir), llm=fake_llm, engine_args={})


def chat(text: str, params: SamplingParams | None = None, prefill: str = "") -> ChatRequest:
    return ChatRequest.of([{"role": "user", "content": text}], params or SamplingParams(), prefill)


# -- requests ------------------------------------------------------------------------------------


def test_sampling_params_map_one_to_one(backend: VLLMBackend, api: Api) -> None:
    """Every evolkit field becomes its vLLM field; unset ones are not sent at all."""
    seen: list[dict[str, Any]] = []

    def recording(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return api.SamplingParams(**kwargs)

    backend._api = VLLMApi(recording, api.TokensPrompt)
    sampled = chat("Write a haiku.", SamplingParams(0.7, 0.9, 7, seed=3, repetition_penalty=1.2))
    plain = chat("Name a color.", SamplingParams(temperature=0.0, max_new_tokens=5))
    with_lp = chat("Say yes.", SamplingParams(0.0, 1.0, 4, logprobs=True, top_logprobs=3))
    only_own = chat("Say no.", SamplingParams(0.0, 1.0, 4, logprobs=True))
    gens = backend.generate([sampled, plain, with_lp, only_own])
    assert [g.finish_reason for g in gens] == ["length"] * 4
    assert seen[0] == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 7,
        "seed": sampled.sampling_seed(),
        "repetition_penalty": 1.2,
    }
    assert seen[1] == {
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 5,
        "seed": plain.sampling_seed(),
    }
    assert seen[2]["logprobs"] == 3 and "repetition_penalty" not in seen[2]
    assert seen[3]["logprobs"] == 0
    # One generate call for the whole list, one SamplingParams per request, in order; the
    # engine honours them (token budget) and its objects carry the values.
    assert len(backend.llm.calls) == 1
    prompts, sent = backend.llm.calls[0]
    assert len(prompts) == 4 and [s.max_tokens for s in sent] == [7, 5, 4, 4]
    assert [s.seed for s in sent] == [
        r.sampling_seed() for r in (sampled, plain, with_lp, only_own)
    ]
    assert sent[0].repetition_penalty == 1.2 and sent[1].repetition_penalty == 1.0
    assert [g.completion_tokens for g in gens] == [7, 5, 4, 4]


def test_sample_does_not_depend_on_batch_mates(backend: VLLMBackend) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=11)
    row = chat("Describe the sea.", params)
    alone = backend.generate([row])[0]
    mates = [chat(f"Other prompt {i}.", params) for i in range(3)]
    among = backend.generate([mates[0], row, *mates[1:]])[1]
    assert among.text == alone.text and alone.completion_tokens == 6
    seeds = [s.seed for _, sps in backend.llm.calls for s in sps]
    assert seeds[0] == seeds[2] == row.sampling_seed()
    assert len(set(seeds[1:])) == 4, "different rows sample with different seeds"
    reseeded = chat("Describe the sea.", SamplingParams(1.0, 1.0, 6, seed=12))
    assert reseeded.sampling_seed() != row.sampling_seed()


def test_chat_rendering_prefill_and_raw_prompt(backend: VLLMBackend, tiny_model_dir: Path) -> None:
    """The prompt is the model's chat template (as the transformers backend renders it) plus the
    prefill, sent as token ids; a raw prompt is sent as it is."""
    from evolkit.models.local import LocalBackend

    local = LocalBackend(str(tiny_model_dir), batch_size=1)
    tok = backend.tokenizer
    conv = ChatRequest.of(
        [
            {"role": "system", "content": "You rewrite instructions."},
            {"role": "user", "content": "Make this harder: add two numbers."},
        ],
        SamplingParams(max_new_tokens=2),
        prefill="Rewritten:",
    )
    raw = ChatRequest((), SamplingParams(max_new_tokens=2), prompt="Once upon a time")
    expected = tok.apply_chat_template(
        conv.message_dicts(), tokenize=False, add_generation_prompt=True
    )
    assert backend.render(conv) == expected + "Rewritten:" == local.render(conv)
    assert backend.render(raw) == "Once upon a time" == local.render(raw)
    backend.generate([conv, raw])
    prompts, _ = backend.llm.calls[0]
    sent = [list(p["prompt_token_ids"]) for p in prompts]
    assert sent[0] == tok(expected + "Rewritten:", add_special_tokens=False)["input_ids"]
    assert sent[1] == tok("Once upon a time", add_special_tokens=False)["input_ids"]
    assert tok.decode(sent[0]).endswith("<|im_start|>assistant\nRewritten:")


def test_logprobs_map_from_vllm_entries(backend: VLLMBackend, tiny: tuple[Any, Any]) -> None:
    """token_logprobs are the chosen tokens' own values, top_logprobs the k most likely in
    order, both as an independent forward pass computes them; checked while sampling hot, so
    the chosen token mostly ranks below the top k and its extra entry must be left out."""
    model, tok = tiny
    k = 3
    req = chat(
        "List three fruits.", SamplingParams(1.5, 1.0, 6, seed=5, logprobs=True, top_logprobs=k)
    )
    gen = backend.generate([req])[0]
    ids = list(backend.llm.calls[0][0][0]["prompt_token_ids"])
    chosen = list(backend.llm.outputs[0].outputs[0].token_ids)
    assert gen.tokens == [tok.decode([t]) for t in chosen]
    assert gen.token_logprobs is not None and gen.top_logprobs is not None
    assert len(gen.token_logprobs) == len(gen.top_logprobs) == len(chosen) == 6
    outside = 0
    for j, t in enumerate(chosen):
        with torch.inference_mode():
            row = model(input_ids=torch.tensor([ids + chosen[:j]])).logits[0, -1].float()
        lp = row.log_softmax(-1)
        assert gen.token_logprobs[j] == pytest.approx(float(lp[t]), abs=1e-5)
        values, idx = torch.topk(lp, k)
        assert [a for a, _ in gen.top_logprobs[j]] == [tok.decode([int(i)]) for i in idx]
        assert [b for _, b in gen.top_logprobs[j]] == pytest.approx(values.tolist(), abs=1e-5)
        outside += int(t not in idx.tolist())
    assert outside > 0, "the sampled token never ranked below the top k: the test lost its point"


def test_alternatives_follow_rank_not_dict_order(backend: VLLMBackend, api: Api) -> None:
    """vLLM puts the chosen token first in each dict; alternatives are listed by rank, and the
    chosen token appears among them only when it ranks within the top k."""
    eos = backend.tokenizer.eos_token_id

    def lp(value: float, rank: int) -> Any:
        return api.Logprob(logprob=value, rank=rank, decoded_token="?")

    positions = [
        {101: lp(-1.2, 2), 100: lp(-0.5, 1), 102: lp(-2.0, 3)},
        {105: lp(-6.0, 7), 102: lp(-2.2, 3), 100: lp(-0.4, 1), 101: lp(-1.1, 2)},
        {eos: lp(-0.1, 1), 103: lp(-3.0, 2), 104: lp(-3.5, 3)},
    ]
    backend.llm.script = lambda ids, sp: api.CompletionOutput(
        index=0,
        text="ab",
        token_ids=[101, 105, eos],
        cumulative_logprob=None,
        logprobs=positions,
        finish_reason="stop",
        stop_reason=None,
    )
    gen = backend.generate(
        [chat("Hi.", SamplingParams(0.7, 1.0, 3, logprobs=True, top_logprobs=3))]
    )[0]
    dec = backend.tokenizer.decode
    assert gen.completion_tokens == 2 and gen.finish_reason == "stop"
    assert gen.tokens == [dec([101]), dec([105]), dec([eos])]
    assert gen.token_logprobs == [-1.2, -6.0, -0.1]
    assert gen.top_logprobs == [
        [(dec([100]), -0.5), (dec([101]), -1.2), (dec([102]), -2.0)],
        [(dec([100]), -0.4), (dec([101]), -1.1), (dec([102]), -2.2)],
        [(dec([eos]), -0.1), (dec([103]), -3.0), (dec([104]), -3.5)],
    ]


def test_logprobs_without_alternatives_and_off(backend: VLLMBackend) -> None:
    own = backend.generate([chat("Hi.", SamplingParams(0.0, 1.0, 3, logprobs=True))])[0]
    assert own.token_logprobs is not None and len(own.token_logprobs) == 3
    assert own.top_logprobs is None
    assert all(v <= 0.0 for v in own.token_logprobs)
    assert own.tokens is not None and len(own.tokens) == 3
    off = backend.generate([chat("Hi.", SamplingParams(0.0, 1.0, 3))])[0]
    assert off.tokens is None and off.token_logprobs is None and off.top_logprobs is None


def scripted(api: Api, ids: list[int], reason: str | None, stop: int | str | None) -> Any:
    return api.CompletionOutput(
        index=0,
        text="done",
        token_ids=ids,
        cumulative_logprob=None,
        logprobs=None,
        finish_reason=reason,
        stop_reason=stop,
    )


def test_finish_reasons_and_token_counts(backend: VLLMBackend, api: Api) -> None:
    eos = backend.tokenizer.eos_token_id
    cases = {
        "eos": ([11, 12, eos], "stop", None),
        "stop-id": ([11, 12, 13], "stop", 13),
        "stop-string": ([11, 12, 13], "stop", "###"),
        "length": ([11, 12, 13, 14], "length", None),
        "abort": ([11], "abort", None),
    }
    order = list(cases)
    backend.llm.script = lambda ids, sp: scripted(api, *cases[order[sp.max_tokens - 1]])
    reqs = [
        chat(f"case {name}", SamplingParams(max_new_tokens=i + 1)) for i, name in enumerate(order)
    ]
    gens = dict(zip(order, backend.generate(reqs), strict=True))
    assert (gens["eos"].finish_reason, gens["eos"].completion_tokens) == ("stop", 2)
    assert (gens["stop-id"].finish_reason, gens["stop-id"].completion_tokens) == ("stop", 2)
    assert (gens["stop-string"].finish_reason, gens["stop-string"].completion_tokens) == ("stop", 3)
    assert (gens["length"].finish_reason, gens["length"].completion_tokens) == ("length", 4)
    assert gens["eos"].text == "done"
    assert gens["abort"].finish_reason == "error" and "'abort'" in gens["abort"].error
    prompts, _ = backend.llm.calls[0]
    for name, prompt in zip(order, prompts, strict=True):
        assert gens[name].prompt_tokens == len(prompt["prompt_token_ids"]) > 0
    assert backend.usage.requests == 5
    assert backend.usage.completion_tokens == 2 + 2 + 3 + 4
    assert backend.usage.prompt_tokens == sum(g.prompt_tokens for g in gens.values())


def test_prompts_that_cannot_run_fail_alone(tiny: tuple[Any, Any], api: Api) -> None:
    """A prompt too long for the engine, or empty, is that row's error; the others run (vLLM
    would otherwise refuse the whole call)."""
    llm = FakeLLM(tiny[0], tiny[1], api, max_model_len=12)
    backend = VLLMBackend("tiny", llm=llm, engine_args={})
    long = ChatRequest((), SamplingParams(max_new_tokens=2), prompt="word " * 40)
    empty = ChatRequest((), SamplingParams(max_new_tokens=2), prompt="")
    short = ChatRequest((), SamplingParams(max_new_tokens=2), prompt="Hello")
    gens = backend.generate([long, empty, short])
    assert gens[0].finish_reason == "error" and "max_model_len of 12" in gens[0].error
    assert gens[1].finish_reason == "error" and "empty prompt" in gens[1].error
    assert gens[2].finish_reason == "length" and gens[2].completion_tokens == 2
    assert len(llm.calls) == 1 and len(llm.calls[0][0]) == 1


def test_engine_failure_is_one_line(backend: VLLMBackend) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    backend.llm.generate = boom  # type: ignore[method-assign]
    with pytest.raises(BackendError, match=r"^vLLM generation failed: CUDA out of memory\.$"):
        backend.generate([chat("Hi.")])


def test_cache_identity_is_vllms_own(backend: VLLMBackend, tiny_model_dir: Path) -> None:
    from evolkit.models.local import LocalBackend

    local = LocalBackend(str(tiny_model_dir), batch_size=1)
    assert backend.cache_id.startswith("vllm[auto]:")
    assert backend.model_id == local.model_id == tiny_model_dir.name
    req = chat("Hi.")
    assert req.key(backend.cache_id) != req.key(local.cache_id)
    fp32 = VLLMBackend(str(tiny_model_dir), llm=backend.llm, engine_args={"dtype": "float32"})
    assert fp32.cache_id != backend.cache_id and fp32.cache_id.startswith("vllm[float32]:")


# -- scoring -------------------------------------------------------------------------------------

ITEMS = [
    ScoreItem("Add the numbers.", "2 and 3", "The sum of 2 and 3 is 5."),
    ScoreItem("Name a color.", "", "Blue."),
    ScoreItem("Translate to French: good morning, my friend, how are you?", "", "Bonjour."),
    ScoreItem("Write a long story about a dragon who learns to bake bread.", "", " ".join(
        f"Sentence {i} of the story goes on." for i in range(12))),
    ScoreItem("", "", "An answer without a question."),
    ScoreItem("Say nothing.", "", ""),
    ScoreItem("One", "", "x"),
]  # fmt: skip


@pytest.mark.parametrize("template", ["plain", "alpaca", "chat"])
def test_scorer_equals_loss_scorer(template: str, fake_llm: FakeLLM, tiny: tuple[Any, Any]) -> None:
    """Same layouts, same positions, same numbers as the transformers scorer (both fp32 on the
    same model here), including truncation, empty spans and their reasons."""
    model, tok = tiny
    max_length = 40
    ref = LossScorer(model, tok, template, max_length=max_length).score(ITEMS)  # type: ignore[arg-type]
    ticks: list[tuple[int, int]] = []
    scorer = VLLMScorer(fake_llm, template=template, max_length=max_length, chunk_tokens=64)  # type: ignore[arg-type]
    got = scorer.score(ITEMS, progress=lambda d, t: ticks.append((d, t)))
    assert scorer.template == template and scorer.max_length == max_length
    assert scorer.head == "vllm-prompt-logprobs"
    assert any(r.truncated for r in ref), "no row exercises truncation"
    assert any(r.error for r in ref), "no row exercises an unscorable span"
    for a, b in zip(ref, got, strict=True):
        for name in LOSSES:
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert y == pytest.approx(x, abs=1e-5), name
        assert (a.n_q, a.n_a, a.truncated, a.error, a.n_tokens) == (
            b.n_q, b.n_a, b.truncated, b.error, b.n_tokens
        )  # fmt: skip
    # What went to the engine: token prompts no longer than max_length, one scoring token,
    # the chosen tokens' own prompt log-probabilities; several calls of about 64 tokens.
    assert len(fake_llm.calls) > 1
    for prompts, sps in fake_llm.calls:
        assert all(1 < len(p["prompt_token_ids"]) <= max_length for p in prompts)
        assert all(sp.max_tokens == 1 and sp.prompt_logprobs == 0 for sp in sps)
    assert ticks[-1][0] == ticks[-1][1] > 0
    assert [d for d, _ in ticks] == sorted(d for d, _ in ticks)


def test_scorer_refuses_a_context_shorter_than_max_length(tiny: tuple[Any, Any], api: Api) -> None:
    llm = FakeLLM(tiny[0], tiny[1], api, max_model_len=512)
    with pytest.raises(
        EvolkitError, match=r"--max-length 2048 does not fit .* max_model_len of 512"
    ):
        VLLMScorer(llm, max_length=2048)
    assert VLLMScorer(llm, max_length=511).max_length == 511


def test_scorer_missing_prompt_logprob_is_one_line(fake_llm: FakeLLM) -> None:
    inner = fake_llm._prompt_logprobs
    fake_llm._prompt_logprobs = lambda ids, k: [None] * len(ids)  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="no prompt log-probability for a scored token"):
        VLLMScorer(fake_llm).score(ITEMS[:1])
    fake_llm._prompt_logprobs = inner  # type: ignore[method-assign]


# -- import guard and engines --------------------------------------------------------------------


def test_without_vllm_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees when not installed
    for make in (
        lambda: VLLMBackend("embedded"),
        lambda: BackendFactory(None).get(ModelSpec(backend="vllm", model="embedded")),
        lambda: VLLMScorer.load("embedded"),
    ):
        with pytest.raises(EvolkitError) as err:
            make()
        message = str(err.value)
        assert INSTALL in message and "not installed" in message and "\n" not in message


def test_broken_vllm_install_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "vllm":
            raise ImportError("libcudart.so.13: cannot open shared object file", name="torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(EvolkitError, match=r"installed but does not import \(libcudart"):
        vmod._import_vllm()


def test_engines_are_shared_and_load_failures_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[dict[str, Any]] = []

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            if kwargs["model"] == "bad":
                raise ValueError("No CUDA GPUs are available\n(traceback...)")
            made.append(kwargs)

    module = types.ModuleType("vllm")
    module.LLM = LLM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vmod, "_ENGINES", {})
    a = vmod.shared_llm("/models/m", {"dtype": "bfloat16", "max_model_len": 4096})
    b = vmod.shared_llm("/models/m", {"max_model_len": 4096, "dtype": "bfloat16"})
    c = vmod.shared_llm("/models/m", {"dtype": "float32"})
    assert a is b and a is not c
    assert made == [
        {"dtype": "bfloat16", "max_model_len": 4096, "model": "/models/m"},
        {"dtype": "float32", "model": "/models/m"},
    ]
    with pytest.raises(
        BackendError, match=r"^vLLM could not load 'bad': No CUDA GPUs are available$"
    ):
        vmod.shared_llm("bad")
    vmod.release_engines()
    assert vmod._ENGINES == {}


def test_engine_args_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vmod.ENGINE_ARGS_ENV, json.dumps({"tensor_parallel_size": 2}))
    assert vmod.engine_args_from_env() == {"tensor_parallel_size": 2}
    monkeypatch.setenv(vmod.ENGINE_ARGS_ENV, "{tensor_parallel_size: 2}")
    with pytest.raises(EvolkitError, match="not valid JSON"):
        vmod.engine_args_from_env()
    monkeypatch.setenv(vmod.ENGINE_ARGS_ENV, "[2]")
    with pytest.raises(EvolkitError, match="JSON object"):
        vmod.engine_args_from_env()
    monkeypatch.delenv(vmod.ENGINE_ARGS_ENV)
    assert vmod.engine_args_from_env() == {}


# -- on a GPU (skipped here) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_llm(embedded_dir: Path) -> Iterator[tuple[str, Any]]:
    """A real fp32 vLLM engine on the embedded model (or $EVOLKIT_TEST_VLLM_MODEL)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if real_api() is None:
        pytest.skip("needs vLLM installed")
    path = os.environ.get("EVOLKIT_TEST_VLLM_MODEL", str(embedded_dir))
    args = {"dtype": "float32", "gpu_memory_utilization": 0.4, "max_model_len": 2048,
            "enforce_eager": True, "seed": 0}  # fmt: skip
    llm = vmod.shared_llm(path, args)
    yield path, llm
    vmod.release_engines()


@pytest.mark.slow
@pytest.mark.parametrize("template", ["plain", "chat"])
def test_gpu_scorer_equals_transformers_scorer(template: str, gpu_llm: tuple[str, Any]) -> None:
    """The 1e-3 promise, on a real engine: fp32 on both sides, the same model."""
    path, llm = gpu_llm
    items = [*ITEMS, *(ScoreItem(f"Explain idea {i} in detail.", "", "It means " * (5 + i))
                       for i in range(20))]  # fmt: skip
    ref = LossScorer.load(path, device="cuda", template=template, max_length=1024).score(items)  # type: ignore[arg-type]
    got = VLLMScorer(llm, template=template, max_length=1024).score(items)  # type: ignore[arg-type]
    worst = 0.0
    for a, b in zip(ref, got, strict=True):
        for name in LOSSES:
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None)
            if x is not None:
                worst = max(worst, abs(x - y))
    assert worst <= 1e-3, f"max |vllm - transformers| = {worst:.2e}"


@pytest.mark.slow
def test_gpu_generation_maps_and_seeds(gpu_llm: tuple[str, Any]) -> None:
    path, llm = gpu_llm
    backend = VLLMBackend(path, llm=llm, engine_args={"dtype": "float32"})
    greedy = chat("Name three colors.", SamplingParams(0.0, 1.0, 16, logprobs=True, top_logprobs=2))
    hot = chat("Write a line of poetry.", SamplingParams(0.9, 0.95, 16, seed=4))
    first = backend.generate([greedy, hot])
    mates = [
        chat(f"Tell me about the number {i}.", SamplingParams(0.9, 0.95, 16)) for i in range(6)
    ]
    second = backend.generate([*mates, hot, greedy])
    assert first[0].text == second[-1].text and first[1].text == second[-2].text
    g: Generation = first[0]
    assert g.finish_reason in ("stop", "length") and g.completion_tokens > 0
    assert g.token_logprobs is not None and g.top_logprobs is not None and g.tokens is not None
    assert len(g.tokens) == len(g.token_logprobs) == len(g.top_logprobs)
    for own, alts in zip(g.token_logprobs, g.top_logprobs, strict=True):
        assert len(alts) == 2 and alts[0][1] >= alts[1][1]
        assert own == pytest.approx(alts[0][1], abs=1e-4)  # greedy took the most likely
