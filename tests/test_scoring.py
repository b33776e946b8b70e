"""Loss scoring: exact token layouts, batched == naive, hand-computed losses and edge cases."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from evolkit.models.scoring import (  # noqa: E402
    ALPACA_INPUT,
    ALPACA_RESPONSE,
    ALPACA_RESPONSE_AFTER_PROMPT,
    MSG_EMPTY_OUTPUT,
    MSG_EMPTY_QUERY,
    MSG_OUTPUT_TOO_SHORT,
    Layout,
    Losses,
    LossScorer,
    ScoreItem,
    _jobs,
    as_template,
    build_layout,
    ic_ifd,
    ifd,
    plan_batches,
    score_naive,
)

LOSSES = ("loss_q", "loss_a_given_q", "loss_a")
TEXT = (
    "the cat sat on a mat while seven quiet engineers wrote careful tests about token losses "
    "and nobody expected the answer to be 42 or perhaps $3.50, naïve café, 東京, emoji 🙂"
)
WORDS = TEXT.split(" ")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run this module's models on one thread. The tiny model's kernels are too small to gain
    from a second one, and two OpenMP threads on a busy 2-core machine (tests run beside other
    work) spend most of their time waiting on each other: measured 5x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, one_thread: None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    return model.eval(), tok


class NoBos:
    """The same tokenizer, but without a BOS token: exercises the `plain` no-prefix rule."""

    bos_token_id = None
    bos_token = None

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tok(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def one_token_word(tok: Any) -> str:
    for word in ("Hi", "Yes", "the", "A", "x"):
        if len(ids(tok, word)) == 1:
            return word
    raise AssertionError("no one-token word found")


def random_items(tok: Any, n: int, seed: int = 0) -> list[ScoreItem]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    items = [
        ScoreItem(text(1, 12), text(1, 8) if rng.random() < 0.4 else "", text(1, 40))
        for _ in range(n)
    ]
    one = one_token_word(tok)
    items += [
        ScoreItem("Answer with one word.", "", one),  # one-token output
        ScoreItem(one, "", "A short answer here."),  # one-token instruction
        ScoreItem("Empty input field.", "", "Fine."),
        ScoreItem("With an input.", "Some input text", "Output text."),
        ScoreItem("No output at all.", "", ""),  # empty output -> per-row error
        ScoreItem("", "", "An answer to nothing."),  # empty instruction
        ScoreItem("Long output.", "", " ".join(WORDS * 4)),  # truncated at small max_length
        ScoreItem(" ".join(WORDS * 3), "", "Cut before me."),  # answer truncated away
    ]
    return items


def assert_same(a: list[Losses], b: list[Losses], tol: float = 1e-4) -> float:
    """Every loss equal within tol, same Nones, same flags and errors; returns the worst gap."""
    assert len(a) == len(b)
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert (x.truncated, x.error, x.n_q, x.n_a, x.n_tokens) == (
            y.truncated,
            y.error,
            y.n_q,
            y.n_a,
            y.n_tokens,
        )
        for name in LOSSES:
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None) == (v is None), (name, x, y)
            if u is not None:
                assert math.isfinite(u) and math.isfinite(v)
                worst = max(worst, abs(u - v))
    assert worst <= tol, worst
    return worst


def assert_no_nan(results: list[Losses]) -> None:
    for r in results:
        for name in LOSSES:
            value = getattr(r, name)
            assert value is None or math.isfinite(value), r
            if value is None:
                assert r.error, r
        for value in (r.ifd, r.ic_ifd):
            assert value is None or math.isfinite(value)


# -- layouts -------------------------------------------------------------------------------------


def test_plain_layout_is_prefix_q_newline_output(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    item = ScoreItem("Translate the sentence.", "Bonjour le monde", "Hello world.")
    lay = build_layout(tok, item, "plain", 2048)
    q = ids(tok, "Translate the sentence.\nBonjour le monde")
    nl = ids(tok, "\n")
    a = ids(tok, "Hello world.")
    prefix = [tok.bos_token_id]
    assert tok.bos_token_id is not None
    assert list(lay.cond) == prefix + q + nl + a
    assert list(lay.uncond) == prefix + a
    assert lay.q_spans == ((1, 1 + len(q)),)
    assert lay.a_span_cond == (1 + len(q) + len(nl), len(lay.cond))
    assert lay.a_span_uncond == (1, 1 + len(a))
    assert not lay.truncated
    assert (lay.cond_fixed, lay.uncond_fixed) == (1, 1)


def test_plain_layout_without_bos_has_no_prefix(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    lay = build_layout(NoBos(tok), ScoreItem("Say it.", "", "Said."), "plain", 2048)
    q, nl, a = ids(tok, "Say it."), ids(tok, "\n"), ids(tok, "Said.")
    assert list(lay.cond) == q + nl + a
    assert list(lay.uncond) == a
    assert lay.q_spans == ((0, len(q)),)


def test_alpaca_layout_spans_are_the_content_ids(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    item = ScoreItem("Sum the numbers.", "3 and 4", "7")
    lay = build_layout(tok, item, "alpaca", 2048)
    (s1, e1), (s2, e2) = lay.q_spans
    assert list(lay.cond[s1:e1]) == ids(tok, "Sum the numbers.")
    assert list(lay.cond[s2:e2]) == ids(tok, "3 and 4")
    assert list(lay.cond[e1:s2]) == ids(tok, ALPACA_INPUT)
    s, e = lay.a_span_cond
    assert list(lay.cond[e2:s]) == ids(tok, ALPACA_RESPONSE_AFTER_PROMPT)
    assert list(lay.cond[s:e]) == ids(tok, "7") and e == len(lay.cond)
    assert list(lay.uncond) == [tok.bos_token_id, *ids(tok, ALPACA_RESPONSE), *ids(tok, "7")]
    assert lay.cond[0] == tok.bos_token_id and lay.cond_fixed == s1
    no_input = build_layout(tok, ScoreItem("Sum the numbers.", "", "7"), "alpaca", 2048)
    assert len(no_input.q_spans) == 1


def test_chat_layout_matches_the_chat_template(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    item = ScoreItem("What is two plus two?", "", "Four.")
    lay = build_layout(tok, item, "chat", 2048)
    (qs, qe), (as_, ae) = lay.q_spans[0], lay.a_span_cond
    assert list(lay.cond[qs:qe]) == ids(tok, item.query)
    assert list(lay.cond[as_:ae]) == ids(tok, "Four.")
    # The prompt part is what the tokenizer's own template produces for this conversation.
    messages = [{"role": "user", "content": item.query}]
    own = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert list(lay.cond[:as_]) == ids(tok, own)
    full = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": "Four."}], tokenize=False
    )
    assert list(lay.cond) == ids(tok, full)
    # Unconditioned: the same transcript with an empty user message.
    empty = tok.apply_chat_template(
        [{"role": "user", "content": ""}, {"role": "assistant", "content": "Four."}],
        tokenize=False,
    )
    assert list(lay.uncond) == ids(tok, empty)


def test_truncation_cuts_the_tail_and_flags(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    long_answer = " ".join(WORDS * 3)
    lay = build_layout(tok, ScoreItem("Q here.", "", long_answer), "plain", 16)
    assert lay.truncated and len(lay.cond) == 16 and len(lay.uncond) == 16
    assert lay.a_span_cond[1] == 16 and lay.a_span_uncond == (1, 16)
    full = build_layout(tok, ScoreItem("Q here.", "", long_answer), "plain", 2048)
    assert lay.cond == full.cond[:16]


def test_bad_settings_raise(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    with pytest.raises(ValueError):
        as_template("vicuna")
    with pytest.raises(ValueError):
        LossScorer(model, tok, max_length=1)
    with pytest.raises(ValueError):
        LossScorer(model, tok, batch_size=0)
    no_template = NoBos(tok)
    no_template.chat_template = None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="chat template"):
        build_layout(no_template, ScoreItem("a", "", "b"), "chat")


# -- exactness -----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["plain", "alpaca", "chat"])
def test_batched_equals_naive_tiny(tiny: tuple[Any, Any], template: str) -> None:
    model, tok = tiny
    items = random_items(tok, 36, seed=len(template))
    max_length = {"plain": 48, "alpaca": 96, "chat": 96}[template]
    naive = score_naive(model, tok, items, as_template(template), max_length)
    fast = LossScorer(model, tok, as_template(template), max_length, batch_size=5).score(items)
    assert_same(naive, fast)
    assert_no_nan(fast)
    assert any(r.truncated for r in fast) and any(r.error for r in fast)
    assert sum(r.error == "" for r in fast) >= 30


def test_no_bos_tokenizer_equals_naive(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    nobos = NoBos(tok)
    items = random_items(tok, 12, seed=7)
    naive = score_naive(model, nobos, items, "plain", 48)
    fast = LossScorer(model, nobos, "plain", 48, batch_size=4).score(items)
    assert_same(naive, fast)
    assert_no_nan(fast)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_does_not_change_results(tiny: tuple[Any, Any], batch_size: int) -> None:
    model, tok = tiny
    items = random_items(tok, 10, seed=3)
    ref = LossScorer(model, tok, "plain", 48, batch_size=8).score(items)
    got = LossScorer(model, tok, "plain", 48, batch_size=batch_size).score(items)
    assert_same(ref, got, tol=1e-5)


@pytest.mark.parametrize("head", ["split", "keep", "full"])
def test_head_paths_agree(tiny: tuple[Any, Any], head: str) -> None:
    model, tok = tiny
    items = random_items(tok, 8, seed=11)
    naive = score_naive(model, tok, items, "alpaca", 48)
    fast = LossScorer(model, tok, "alpaca", 48, batch_size=4, head=head).score(items)  # type: ignore[arg-type]
    assert_same(naive, fast)


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_shared_template_prefix_is_run_once_and_changes_nothing(
    tiny: tuple[Any, Any], template: str
) -> None:
    model, tok = tiny
    items = random_items(tok, 10, seed=5)
    t = as_template(template)
    shared = LossScorer(model, tok, t, 96, batch_size=4)
    plan = shared._plan(_jobs(shared.layouts(items)))
    assert any(start > 0 for _, start, _ in plan)  # the template head is cached, not rerun
    unshared = LossScorer(model, tok, t, 96, batch_size=4, share_prefix=False)
    assert all(start == 0 for _, start, _ in unshared._plan([]))
    assert_same(unshared.score(items), shared.score(items))
    assert_same(score_naive(model, tok, items, t, 96), shared.score(items))


def test_plan_batches_avoids_padding_and_respects_limits() -> None:
    widths = [90, 85, 10, 9, 8, 3]
    assert plan_batches(widths, 8, 10_000, 32) == [(0, 2), (2, 6)]
    assert plan_batches(widths, 8, 10_000, 0) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    assert plan_batches(widths, 8, 10_000, 10**9) == [(0, 6)]  # passes dear: one big batch
    assert plan_batches(widths, 4, 10_000, 10**9) == [(0, 2), (2, 6)]  # at most 4 per pass
    capped = plan_batches(widths, 8, 100, 10**9)
    assert all(b - a == 1 or (b - a) * widths[a] <= 100 for a, b in capped)
    assert plan_batches([], 8, 100, 32) == []
    rng = random.Random(1)
    many = sorted((rng.randint(1, 300) for _ in range(200)), reverse=True)
    cuts = plan_batches(many, 16, 2048, 32)
    assert [i for a, b in cuts for i in range(a, b)] == list(range(200))
    assert all(b - a <= 16 and ((b - a) * many[a] <= 2048 or b - a == 1) for a, b in cuts)


def test_auto_head_picks_split_for_llama(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    assert LossScorer(model, tok).head == "split"


def test_loss_q_by_hand(tiny: tuple[Any, Any]) -> None:
    """L(Q), L(A|Q) and L(A) against a direct cross-entropy over the documented positions."""
    import torch.nn.functional as F

    model, tok = tiny
    item = ScoreItem("Name a colour.", "Any colour", "Blue is a colour.")
    q = ids(tok, "Name a colour.\nAny colour")
    nl, a = ids(tok, "\n"), ids(tok, "Blue is a colour.")
    seq = [tok.bos_token_id, *q, *nl, *a]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([seq])).logits[0]
        # Token i is predicted by position i - 1: Q tokens are 1..len(q), each has a predecessor.
        q_pos = torch.arange(1, 1 + len(q))
        expected_q = F.cross_entropy(logits[q_pos - 1], torch.tensor(seq)[q_pos]).item()
        a_pos = torch.arange(len(seq) - len(a), len(seq))
        expected_aq = F.cross_entropy(logits[a_pos - 1], torch.tensor(seq)[a_pos]).item()
        alone = [tok.bos_token_id, *a]
        logits_a = model(input_ids=torch.tensor([alone])).logits[0]
        expected_a = F.cross_entropy(logits_a[:-1], torch.tensor(alone[1:])).item()
    got = LossScorer(model, tok).score([item])[0]
    assert got.n_q == len(q) and got.n_a == len(a)
    assert got.loss_q == pytest.approx(expected_q, abs=1e-5)
    assert got.loss_a_given_q == pytest.approx(expected_aq, abs=1e-5)
    assert got.loss_a == pytest.approx(expected_a, abs=1e-5)
    assert got.ifd == pytest.approx(expected_aq / expected_a, rel=1e-5)


# -- formulas and edge cases ---------------------------------------------------------------------


def test_ifd_and_ic_ifd_formulas() -> None:
    # SPEC check: IFD 0.83 with L(Q) = 2.3 gives IC-IFD 0.36.
    assert ifd(0.83 * 2.0, 2.0) == pytest.approx(0.83)
    assert ic_ifd(0.83 * 2.0, 2.3, 2.0) == pytest.approx(0.3609, abs=1e-4)
    r = Losses(loss_q=2.3, loss_a_given_q=1.66, loss_a=2.0, n_q=3, n_a=4, truncated=False)
    assert r.ifd == pytest.approx(0.83) and r.ic_ifd == pytest.approx(0.83 / 2.3)
    assert set(r.scores()) == {"loss_q", "loss_a_given_q", "loss_a", "ifd", "ic_ifd"}
    assert ifd(None, 2.0) is None and ifd(1.0, 0.0) is None
    assert ic_ifd(1.0, None, 2.0) is None and ic_ifd(1.0, 0.0, 2.0) is None
    partial = Losses(None, 1.0, 2.0, 0, 3, False, error=MSG_EMPTY_QUERY)
    assert partial.ifd == 0.5 and partial.ic_ifd is None
    assert set(partial.scores()) == {"loss_a_given_q", "loss_a", "ifd"}


def test_one_token_output(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    item = ScoreItem("Answer in one word.", "", one_token_word(tok))
    # With a BOS prefix the one answer token has a predecessor: finite L(A).
    with_bos = LossScorer(model, tok).score([item])[0]
    assert with_bos.n_a == 1 and with_bos.error == ""
    assert with_bos.loss_a is not None and math.isfinite(with_bos.loss_a)
    # Without BOS, L(A) has no scored token: a per-row error, never NaN.
    no_bos = LossScorer(model, NoBos(tok)).score([item])[0]
    assert no_bos.loss_a is None and no_bos.error == MSG_OUTPUT_TOO_SHORT
    assert no_bos.loss_a_given_q is not None and no_bos.ifd is None


def test_empty_fields(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    scorer = LossScorer(model, tok)
    empty_input, no_output, no_instruction = scorer.score(
        [
            ScoreItem("Say hello.", "", "Hello."),
            ScoreItem("Say hello.", "", ""),
            ScoreItem("", "", "Hello."),
        ]
    )
    assert empty_input.error == "" and empty_input.ic_ifd is not None
    assert no_output.error == MSG_EMPTY_OUTPUT and no_output.loss_a_given_q is None
    assert no_output.loss_q is not None
    assert no_instruction.error == MSG_EMPTY_QUERY and no_instruction.loss_q is None
    assert no_instruction.ifd is not None and no_instruction.ic_ifd is None


def test_output_longer_than_max_length(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    long_answer = " ".join(WORDS * 4)
    kept, lost = LossScorer(model, tok, max_length=32).score(
        [ScoreItem("Short question?", "", long_answer), ScoreItem(" ".join(WORDS), "", "Gone.")]
    )
    assert kept.truncated and kept.error == ""
    assert kept.n_a == 32 - len(ids(tok, "Short question?")) - 2
    assert all(math.isfinite(v) for v in kept.scores().values())
    assert lost.truncated and lost.loss_a_given_q is None
    assert "truncation at max_length=32" in lost.error
    assert lost.loss_q is not None and lost.loss_a is not None  # L(A) alone still fits


def test_progress_reports_forward_tokens(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    calls: list[tuple[int, int]] = []
    LossScorer(model, tok, batch_size=2).score(
        random_items(tok, 5), progress=lambda d, t: calls.append((d, t))
    )
    assert calls and calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_empty_input_list(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    assert LossScorer(model, tok).score([]) == []
    assert score_naive(model, tok, [], "plain", 2048) == []


def test_layout_type(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    assert isinstance(build_layout(tok, ScoreItem("a", "", "b")), Layout)


@pytest.mark.slow
@pytest.mark.parametrize("template", ["plain", "chat"])
def test_batched_equals_naive_embedded(embedded_dir: Path, template: str, one_thread: None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    model = AutoModelForCausalLM.from_pretrained(str(embedded_dir), dtype=torch.float32).eval()
    items = [
        ScoreItem("Give three tips for staying healthy.", "", "Eat well, sleep, exercise."),
        ScoreItem("Translate to French.", "Good morning", "Bonjour"),
        ScoreItem("Answer in one word.", "", one_token_word(tok)),
        ScoreItem("Write a long list.", "", " ".join(WORDS * 2)),  # truncated at 48
        ScoreItem("Nothing to say.", "", ""),
        ScoreItem("What is 2+2?", "", "4"),
    ]
    t = as_template(template)
    naive = score_naive(model, tok, items, t, 48 if template == "plain" else 80)
    fast = LossScorer(model, tok, t, 48 if template == "plain" else 80, batch_size=3).score(items)
    assert_same(naive, fast)
    assert_no_nan(fast)
    assert fast[3].truncated and fast[4].error == MSG_EMPTY_OUTPUT
    # A trained model finds the answer easier with its instruction than without.
    assert fast[0].ifd is not None and fast[0].ifd < 1.0
