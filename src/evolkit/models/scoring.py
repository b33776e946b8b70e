"""Token losses for IFD and IC-IFD scoring: an exact reference loop and a fast batched scorer.

Three mean token negative log-likelihoods (nats, not perplexity) describe a pair (Q, A):

* ``L(Q)``   - the instruction tokens, read from the start of the conditioned sequence;
* ``L(A|Q)`` - the answer tokens, conditioned on the instruction;
* ``L(A)``   - the answer tokens alone (no instruction in front of them).

Both scorers share one definition of *what* is scored: :func:`build_layout` turns an item into
two token-id sequences (conditioned, unconditioned) by concatenating separately tokenized pieces,
so every span (which ids are Q, which are A) is known by construction and never found by searching
strings. :func:`score_naive` then runs one row at a time with a full forward pass per loss (the
reference, and the benchmark baseline); :class:`LossScorer` computes the same numbers with two
passes per row, length-bucketed batches and vocabulary projections only where a token is scored.

This module knows nothing of records or pipeline stages: it maps ``ScoreItem`` to ``Losses``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

if TYPE_CHECKING:
    import torch

Template = Literal["plain", "alpaca", "chat"]
TEMPLATES: tuple[str, ...] = get_args(Template)
HeadMode = Literal["auto", "split", "keep", "full"]
ProgressFn = Callable[[int, int], None]

# The alpaca-style template, in our own words but with the standard shape: a preamble, an
# instruction section, an optional input section and a response header.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that carries out the request.\n\n"
)
ALPACA_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that gives "
    "further context. Write a response that carries out the request.\n\n"
)
ALPACA_INSTRUCTION = "### Instruction:\n"
ALPACA_INPUT = "\n\n### Input:\n"
ALPACA_RESPONSE_AFTER_PROMPT = "\n\n### Response:\n"
ALPACA_RESPONSE = "### Response:\n"

# A string no real instruction contains; it marks where the chat template puts the message
# content, so the template's own text around it can be tokenized as fixed pieces.
_SENTINEL = "\u2063EVOLKIT\u2063SCORING\u2063SLOT\u2063"

MSG_EMPTY_OUTPUT = "empty output"
MSG_OUTPUT_TOO_SHORT = "output too short to score (one token and no BOS token before it)"
MSG_EMPTY_QUERY = "empty instruction"
MSG_QUERY_TOO_SHORT = "instruction too short to score (one token and no BOS token before it)"


def ifd(loss_a_given_q: float | None, loss_a: float | None) -> float | None:
    """IFD = L(A|Q) / L(A): below 1 the instruction makes the answer easier to predict."""
    if loss_a_given_q is None or loss_a is None or not loss_a > 0.0:
        return None
    return loss_a_given_q / loss_a


def ic_ifd(
    loss_a_given_q: float | None, loss_q: float | None, loss_a: float | None
) -> float | None:
    """IC-IFD = L(A|Q) / (L(Q) * L(A)): IFD divided by how hard the instruction itself is."""
    base = ifd(loss_a_given_q, loss_a)
    if base is None or loss_q is None or not loss_q > 0.0:
        return None
    return base / loss_q


@dataclass(frozen=True)
class ScoreItem:
    """One (instruction, input, output) triple to score."""

    instruction: str
    input: str = ""
    output: str = ""

    @property
    def query(self) -> str:
        """Q as SPEC section 5 defines it: instruction, plus a newline and the input if any."""
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction


@dataclass
class Losses:
    """The three losses of one row, with token counts and what went wrong (if anything).

    A loss is ``None`` when no token of its span could be scored; ``error`` then says why, so a
    caller can reject the row with a reason instead of carrying a NaN forward. ``n_a`` counts
    the scored answer tokens of the conditioned sequence; ``n_tokens`` is the length of the two
    scored sequences together (after truncation), the unit of the throughput figures.
    """

    loss_q: float | None
    loss_a_given_q: float | None
    loss_a: float | None
    n_q: int
    n_a: int
    truncated: bool
    error: str = ""
    n_tokens: int = 0

    @property
    def ifd(self) -> float | None:
        return ifd(self.loss_a_given_q, self.loss_a)

    @property
    def ic_ifd(self) -> float | None:
        return ic_ifd(self.loss_a_given_q, self.loss_q, self.loss_a)

    def scores(self) -> dict[str, float]:
        """The finite values under the names records store them (``record.scores``)."""
        named = {
            "loss_q": self.loss_q,
            "loss_a_given_q": self.loss_a_given_q,
            "loss_a": self.loss_a,
            "ifd": self.ifd,
            "ic_ifd": self.ic_ifd,
        }
        return {k: float(v) for k, v in named.items() if v is not None and math.isfinite(v)}


# -- layouts -------------------------------------------------------------------------------------

Span = tuple[int, int]


@dataclass(frozen=True)
class Layout:
    """The exact ids that are scored for one item, and where each span sits in them.

    Spans are half-open ``[start, end)`` index ranges, already clipped to the truncated
    sequences. ``cond_fixed`` / ``uncond_fixed`` count the leading ids that come from the
    template alone (identical for every row with the same shape); ``q_ids`` / ``a_ids`` are the
    untruncated token counts of Q and A, used to explain an empty span.
    """

    cond: tuple[int, ...]
    q_spans: tuple[Span, ...]
    a_span_cond: Span
    uncond: tuple[int, ...]
    a_span_uncond: Span
    truncated: bool
    cond_fixed: int
    uncond_fixed: int
    q_ids: int
    a_ids: int
    max_length: int

    @property
    def q_end(self) -> int:
        """Where the last Q token ends: the L(Q)-only pass of the naive loop stops there."""
        return max((e for _, e in self.q_spans), default=0)


def _scored(span: Span) -> range:
    """Positions t of a span whose token has a predecessor (position 0 is never scored)."""
    start, end = span
    return range(max(start, 1), end)


def _count(spans: Sequence[Span]) -> int:
    return sum(len(_scored(s)) for s in spans)


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with special tokens off (batched: the fast tokenizer is Rust)."""
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=False)
    return [list(map(int, x)) for x in enc["input_ids"]]


def bos_prefix(tokenizer: Any) -> list[int]:
    """The `plain` prefix: the tokenizer's BOS id when it has one, whether or not it adds it."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None else []


@dataclass(frozen=True)
class _ChatParts:
    """Fixed ids of the chat template around the user content and after the answer."""

    head: tuple[int, ...]  # everything before the user content
    tail: tuple[int, ...]  # after the user content, through the generation prompt
    end_of_turn: tuple[int, ...]  # what the template writes after the assistant's content


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def chat_parts(tokenizer: Any) -> _ChatParts:
    """Split the tokenizer's chat template into fixed pieces around a sentinel message.

    The template is rendered once with a sentinel as the user content; the text before and
    after it are the template's own pieces, which are tokenized separately. A row's sequence is
    then head + ids(q) + tail + ids(output) + end_of_turn, so the user-content span is exact.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat' needs a tokenizer with a chat template")
    prompt = _render(tokenizer, [{"role": "user", "content": _SENTINEL}], True)
    if prompt.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not show the user content exactly once")
    head, tail = prompt.split(_SENTINEL)
    end_of_turn = ""
    answer = _SENTINEL + "A"
    full = _render(
        tokenizer,
        [{"role": "user", "content": _SENTINEL}, {"role": "assistant", "content": answer}],
        False,
    )
    if full.count(answer) == 1:
        end_of_turn = full.split(answer, 1)[1]
    head_ids, tail_ids, eot_ids = _ids(tokenizer, [head, tail, end_of_turn])
    return _ChatParts(tuple(head_ids), tuple(tail_ids), tuple(eot_ids))


class LayoutBuilder:
    """Builds :class:`Layout` objects for one tokenizer, template and truncation length.

    Template constants are tokenized once; row texts are tokenized in one batched call.
    """

    def __init__(self, tokenizer: Any, template: Template = "plain", max_length: int = 2048):
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}: choose one of {', '.join(TEMPLATES)}")
        if max_length < 2:
            raise ValueError("max_length must be at least 2")
        self.tokenizer = tokenizer
        self.template: Template = template
        self.max_length = max_length
        self.prefix = tuple(bos_prefix(tokenizer))
        consts = [
            "\n",
            ALPACA_PREAMBLE + ALPACA_INSTRUCTION,
            ALPACA_PREAMBLE_WITH_INPUT + ALPACA_INSTRUCTION,
            ALPACA_INPUT,
            ALPACA_RESPONSE_AFTER_PROMPT,
            ALPACA_RESPONSE,
        ]
        self._const = {
            t: tuple(ids) for t, ids in zip(consts, _ids(tokenizer, consts), strict=True)
        }
        self.chat = chat_parts(tokenizer) if template == "chat" else None

    def build(self, items: Sequence[ScoreItem]) -> list[Layout]:
        texts: list[str] = []
        for it in items:
            if self.template == "alpaca":
                texts += [it.instruction, it.input, it.output]
            else:
                texts += [it.query, "", it.output]
        enc = _ids(self.tokenizer, texts)
        out = []
        for i, it in enumerate(items):
            a, b, c = enc[3 * i : 3 * i + 3]
            out.append(self._layout(it, a, b, c))
        return out

    def _layout(self, item: ScoreItem, q1: list[int], q2: list[int], ans: list[int]) -> Layout:
        c = self._const
        # Each sequence is a list of (ids, role) pieces; role "q"/"a" pieces are scored spans,
        # "fixed" pieces at the start are template constants shared by every row of this shape.
        cond: list[tuple[tuple[int, ...], str]]
        uncond: list[tuple[tuple[int, ...], str]]
        if self.template == "plain":
            cond = [(self.prefix, "fixed"), (tuple(q1), "q"), (c["\n"], "sep"), (tuple(ans), "a")]
            uncond = [(self.prefix, "fixed"), (tuple(ans), "a")]
        elif self.template == "alpaca":
            pre = ALPACA_PREAMBLE_WITH_INPUT if item.input else ALPACA_PREAMBLE
            cond = [
                (self.prefix, "fixed"),
                (c[pre + ALPACA_INSTRUCTION], "fixed"),
                (tuple(q1), "q"),
            ]
            if item.input:
                cond += [(c[ALPACA_INPUT], "sep"), (tuple(q2), "q")]
            cond += [(c[ALPACA_RESPONSE_AFTER_PROMPT], "sep"), (tuple(ans), "a")]
            uncond = [(self.prefix, "fixed"), (c[ALPACA_RESPONSE], "fixed"), (tuple(ans), "a")]
        else:
            assert self.chat is not None
            ch = self.chat
            cond = [(ch.head, "fixed"), (tuple(q1), "q"), (ch.tail, "sep"), (tuple(ans), "a")]
            cond.append((ch.end_of_turn, "sep"))
            uncond = [(ch.head + ch.tail, "fixed"), (tuple(ans), "a"), (ch.end_of_turn, "sep")]
        cids, cspans, cfixed, cut_c = self._assemble(cond)
        uids, uspans, ufixed, cut_u = self._assemble(uncond)
        return Layout(
            cond=cids,
            q_spans=tuple(cspans["q"]),
            a_span_cond=cspans["a"][0],
            uncond=uids,
            a_span_uncond=uspans["a"][0],
            truncated=cut_c or cut_u,
            cond_fixed=cfixed,
            uncond_fixed=ufixed,
            q_ids=len(q1) + len(q2),
            a_ids=len(ans),
            max_length=self.max_length,
        )

    def _assemble(
        self, pieces: list[tuple[tuple[int, ...], str]]
    ) -> tuple[tuple[int, ...], dict[str, list[Span]], int, bool]:
        """Concatenate pieces, record the q/a spans, then cut the tail at max_length."""
        ids: list[int] = []
        spans: dict[str, list[Span]] = {"q": [], "a": []}
        fixed = 0
        leading = True
        for piece, role in pieces:
            start = len(ids)
            ids.extend(piece)
            if role in spans:
                spans[role].append((start, len(ids)))
            if leading and role == "fixed":
                fixed = len(ids)
            else:
                leading = False
        n = self.max_length
        clipped = {r: [(min(s, n), min(e, n)) for s, e in v] for r, v in spans.items()}
        return tuple(ids[:n]), clipped, min(fixed, n), len(ids) > n


def build_layout(
    tokenizer: Any, item: ScoreItem, template: Template = "plain", max_length: int = 2048
) -> Layout:
    """The scored ids and spans of one item (see :class:`LayoutBuilder`)."""
    return LayoutBuilder(tokenizer, template, max_length).build([item])[0]


def _losses_from(layout: Layout, sums: Sequence[float]) -> Losses:
    """Turn the three NLL sums of a row into means, with a reason for every missing one."""
    n_q = _count(layout.q_spans)
    n_aq = _count([layout.a_span_cond])
    n_a = _count([layout.a_span_uncond])
    cut = f"nothing of it survives truncation at max_length={layout.max_length}"
    errors: list[str] = []
    if not n_q:
        q_kept = sum(e - s for s, e in layout.q_spans)
        if layout.q_ids == 0:
            errors.append(MSG_EMPTY_QUERY)
        elif q_kept < layout.q_ids:
            errors.append(f"instruction: {cut}")
        else:
            errors.append(MSG_QUERY_TOO_SHORT)
    if layout.a_ids == 0:
        errors.append(MSG_EMPTY_OUTPUT)
    elif not n_aq or not n_a:
        a_kept = layout.a_span_uncond[1] - layout.a_span_uncond[0]
        if not n_aq or a_kept < layout.a_ids:
            errors.append(f"output: {cut}")
        else:
            errors.append(MSG_OUTPUT_TOO_SHORT)
    return Losses(
        loss_q=sums[0] / n_q if n_q else None,
        loss_a_given_q=sums[1] / n_aq if n_aq else None,
        loss_a=sums[2] / n_a if n_a else None,
        n_q=n_q,
        n_a=n_aq,
        truncated=layout.truncated,
        error="; ".join(errors),
        n_tokens=len(layout.cond) + len(layout.uncond),
    )


# -- the reference loop --------------------------------------------------------------------------


def _nll_sum_full(model: Any, ids: Sequence[int], spans: Sequence[Span]) -> float:
    """Sum of NLLs over the spans, from one plain forward pass with full logits."""
    import torch
    import torch.nn.functional as F

    positions = [t for s in spans for t in _scored(s)]
    if not positions:
        return 0.0
    device = _device(model)
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    logits = model(input_ids=x, use_cache=False).logits[0].float()
    logp = F.log_softmax(logits, dim=-1)
    pos = torch.tensor(positions, device=device)
    return float(-logp[pos - 1, x[0, pos]].double().sum())


def score_naive(
    model: Any,
    tokenizer: Any,
    items: Sequence[ScoreItem],
    template: Template = "plain",
    max_length: int = 2048,
) -> list[Losses]:
    """The reference: one row at a time, a separate full forward pass for each loss.

    L(Q) runs over the conditioned sequence cut after Q, L(A|Q) over the whole conditioned
    sequence, L(A) over the unconditioned one; each computes the full log-softmax. Slow on
    purpose: it is the definition the fast scorer is tested against and the benchmark's baseline.
    """
    import torch

    builder = LayoutBuilder(tokenizer, template, max_length)
    out: list[Losses] = []
    with torch.inference_mode():
        for layout in builder.build(items):
            s_q = _nll_sum_full(model, layout.cond[: layout.q_end], layout.q_spans)
            s_aq = _nll_sum_full(model, layout.cond, [layout.a_span_cond])
            s_a = _nll_sum_full(model, layout.uncond, [layout.a_span_uncond])
            out.append(_losses_from(layout, [s_q, s_aq, s_a]))
    return out


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


# -- the fast scorer -----------------------------------------------------------------------------


@dataclass
class _Job:
    """One sequence to run: its ids, the positions scored and the segment each one adds to."""

    ids: tuple[int, ...]
    targets: list[int]  # positions t whose token ids[t] is scored (predicted from t - 1)
    segments: list[int]  # row * 3 + (0: L(Q), 1: L(A|Q), 2: L(A)) for each target
    fixed: int  # leading template-constant ids

    @property
    def need(self) -> int:
        """Ids the forward pass must see: up to the last scored target's predecessor."""
        return self.targets[-1]


def plan_batches(
    widths: Sequence[int], batch_size: int, max_tokens: int, overhead: float
) -> list[tuple[int, int]]:
    """Cut sequences sorted longest first into ``[begin, end)`` batches of least total cost.

    A forward pass costs its padded tokens plus a fixed overhead (reading every weight once,
    dispatching every layer) worth ``overhead`` tokens; a batch of sequences i..j-1 costs
    ``overhead + (j - i) * widths[i]``. A small dynamic programme finds the cheapest cut into
    contiguous batches of at most ``batch_size`` sequences and ``max_tokens`` padded tokens, so
    a 5-token sequence is not padded to the 90-token one sorted next to it, as a fixed-size cut
    would do on a small or skewed set.
    """
    n = len(widths)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for begin in range(end - 1, max(-1, end - 1 - batch_size), -1):
            size = end - begin
            if size > 1 and size * widths[begin] > max_tokens:
                break
            cost = best[begin] + overhead + size * widths[begin]
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    spans: list[tuple[int, int]] = []
    end = n
    while end > 0:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]


def _cost(batch: list[_Job], start: int) -> int:
    """Padded tokens a batch feeds the model: the unit of progress."""
    return len(batch) * (max(j.need for j in batch) - start)


def _jobs(layouts: Sequence[Layout]) -> list[_Job]:
    jobs = []
    for row, lay in enumerate(layouts):
        for ids, parts, fixed in (
            (lay.cond, [(s, 0) for s in lay.q_spans] + [(lay.a_span_cond, 1)], lay.cond_fixed),
            (lay.uncond, [(lay.a_span_uncond, 2)], lay.uncond_fixed),
        ):
            pairs = sorted((t, row * 3 + k) for s, k in parts for t in _scored(s))
            if pairs:
                jobs.append(_Job(ids, [t for t, _ in pairs], [g for _, g in pairs], fixed))
    return jobs


class LossScorer:
    """Fast, exact L(Q), L(A|Q) and L(A) for many rows.

    Work saved against the reference loop, without changing a number beyond float noise:

    * two passes per row, not three: the conditioned pass yields L(Q) and L(A|Q) together;
    * the sequences of all rows are pooled, sorted by length and cut into batches where padding
      would cost more than another pass (:func:`plan_batches`); padding goes on the right and no
      attention mask is passed, so the model runs its plain causal path (a real token never
      attends to a later pad) and padded positions are simply never read;
    * each sequence stops at the last scored token's predecessor (trailing template ids and the
      final token produce nothing that is scored);
    * a template head shared by many rows (the alpaca preamble, the chat system prompt) is run
      once per call and its key/value cache reused by every batch that starts with it;
    * the vocabulary projection and the log-softmax run only on rows whose next token is scored,
      in chunks, instead of materialising logits for every position.

    ``batch_size`` is the most sequences per forward pass (one row is two sequences),
    ``max_batch_tokens`` the most padded tokens per pass, and ``batch_overhead_tokens`` what one
    extra pass is worth in tokens (weights read once more, every layer dispatched once more:
    about 32 on a CPU, far more on a GPU, which is the default there). On a GPU raise
    ``batch_size``: batching is the main lever there. On a CPU the pass is compute-bound once a
    batch holds a few hundred tokens, so the gain comes from the work not done.

    ``head`` picks how scored logits are formed: ``split`` runs the decoder body and applies the
    output embedding to scored rows only; ``keep`` asks the model for logits of scored positions
    (``logits_to_keep`` with a mask, through the model's own forward); ``full`` computes all
    logits and gathers. ``auto`` checks ``split`` against the model's own logits on a probe at
    start-up and falls back to ``keep`` or ``full`` (e.g. for models that post-process logits).
    The model is put in eval mode (dropout off); its weights are not changed.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: Template = "plain",
        max_length: int = 2048,
        batch_size: int = 8,
        max_batch_tokens: int = 16384,
        head: HeadMode = "auto",
        head_chunk_bytes: int = 64 << 20,
        share_prefix: bool = True,
        min_shared_prefix: int = 4,
        batch_overhead_tokens: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        #: The name recorded in rows; `load` sets it from the model folder.
        self.model_id: str = str(getattr(model.config, "name_or_path", "") or "model")
        self.template: Template = template
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_batch_tokens = max(max_batch_tokens, max_length)
        self.builder = LayoutBuilder(tokenizer, template, max_length)
        self.device = _device(model)
        self.head_chunk_bytes = head_chunk_bytes
        self.share_prefix = share_prefix
        if batch_overhead_tokens is None:
            batch_overhead_tokens = 32 if self.device.type == "cpu" else 1024
        self.batch_overhead_tokens = batch_overhead_tokens
        self.min_shared_prefix = max(2, min_shared_prefix)
        self.head: HeadMode = self._pick_head() if head == "auto" else head

    @classmethod
    def load(cls, path: str, device: str | None = None, **kwargs: Any) -> LossScorer:
        """Load a local model folder in fp32 (AutoTokenizer: a model-specific tokenizer class
        can read another model's files without error and tokenize them wrongly)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.eval()
        return cls(model, tokenizer, **kwargs)

    # -- public ---------------------------------------------------------------------------------
    def layouts(self, items: Sequence[ScoreItem]) -> list[Layout]:
        return self.builder.build(items)

    def score(self, items: Sequence[ScoreItem], progress: ProgressFn | None = None) -> list[Losses]:
        """Losses for each item, in order. ``progress(done, total)`` counts forward tokens."""
        import torch

        layouts = self.builder.build(items)
        sums = torch.zeros(3 * len(layouts), dtype=torch.float64)
        plan = self._plan(_jobs(layouts))
        total = sum(_cost(batch, start) for _, start, batches in plan for batch in batches)
        done = 0
        with torch.inference_mode():
            for key, start, batches in plan:
                cache = self._prefix_cache(key) if start else None
                for batch in batches:
                    nll, segs = self._run(batch, start, cache)
                    sums.index_add_(0, segs, nll.double().cpu())
                    done += _cost(batch, start)
                    if progress is not None:
                        progress(done, total)
        flat = sums.tolist()
        return [_losses_from(lay, flat[3 * i : 3 * i + 3]) for i, lay in enumerate(layouts)]

    # -- batching -------------------------------------------------------------------------------
    def _plan(self, jobs: list[_Job]) -> list[tuple[tuple[int, ...], int, list[list[_Job]]]]:
        """Group jobs by shared template prefix, then batch each group by length.

        A group's prefix (all but its last id) is run once and its key/value cache reused by
        every batch of the group; each sequence then starts at the prefix's last id, whose
        output predicts the first scored token. Short prefixes are not worth a cache.
        """
        groups: dict[tuple[int, ...], list[_Job]] = {}
        for job in jobs:
            key = job.ids[: job.fixed] if self.share_prefix else ()
            groups.setdefault(key if len(key) >= self.min_shared_prefix else (), []).append(job)
        plan = []
        for key, members in groups.items():
            start = len(key) - 1 if key else 0
            plan.append((key, start, self._batches(members, start)))
        return plan

    def _batches(self, jobs: list[_Job], start: int) -> list[list[_Job]]:
        """Longest first (memory peaks early), cut where padding would cost more than a pass."""
        ordered = sorted(jobs, key=lambda j: -j.need)
        cuts = plan_batches(
            [j.need - start for j in ordered],
            self.batch_size,
            self.max_batch_tokens,
            self.batch_overhead_tokens,
        )
        return [ordered[a:b] for a, b in cuts]

    def _prefix_cache(self, key: tuple[int, ...]) -> Any:
        """The key/value cache of a shared prefix without its last id (run once per group)."""
        import torch

        x = torch.tensor([list(key[:-1])], dtype=torch.long, device=self.device)
        return returned_cache(self.model(input_ids=x, use_cache=True))

    def _run(self, batch: list[_Job], start: int, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """NLL of every scored token of a batch, with the segment each one belongs to."""
        import copy

        import torch

        width = max(j.need for j in batch) - start
        pad = batch[0].ids[0]
        rows = [list(j.ids[start : j.need]) + [pad] * (width - j.need + start) for j in batch]
        x = torch.tensor(rows, dtype=torch.long, device=self.device)
        # Token t is predicted by the output at position t - 1, i.e. row index t - 1 - start.
        flat_pos = [b * width + t - 1 - start for b, j in enumerate(batch) for t in j.targets]
        tgt = [j.ids[t] for j in batch for t in j.targets]
        segs = torch.tensor([g for j in batch for g in j.segments], dtype=torch.long)
        pos_t = torch.tensor(flat_pos, dtype=torch.long, device=self.device)
        tgt_t = torch.tensor(tgt, dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"use_cache": False}
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(batch))
            kwargs = {"use_cache": True, cache_argument(self.model): past}
        return self._nll(x, pos_t, tgt_t, kwargs), segs

    def _nll(
        self, x: torch.Tensor, pos: torch.Tensor, tgt: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if self.head == "split":
            hidden = self.model.get_decoder()(input_ids=x, **kwargs).last_hidden_state
            rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pos)
            lm_head = self.model.get_output_embeddings()
            vocab = int(lm_head.weight.shape[0])
            chunk = max(16, self.head_chunk_bytes // (4 * vocab))
            parts = [
                F.cross_entropy(
                    lm_head(rows[i : i + chunk]).float(), tgt[i : i + chunk], reduction="none"
                )
                for i in range(0, rows.shape[0], chunk)
            ]
            return torch.cat(parts)
        if self.head == "keep":
            mask = torch.zeros(x.numel(), dtype=torch.bool, device=x.device)
            mask[pos] = True
            logits = self.model(input_ids=x, logits_to_keep=mask.view_as(x), **kwargs).logits
            # A boolean mask selects positions in row-major order, which is pos's order.
            return F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), tgt, reduction="none"
            )
        logits = self.model(input_ids=x, **kwargs).logits
        rows = logits.reshape(-1, logits.shape[-1]).index_select(0, pos).float()
        return F.cross_entropy(rows, tgt, reduction="none")

    def _pick_head(self) -> HeadMode:
        """Use the cheapest head path that reproduces the model's own logits on a probe."""
        import torch

        probe = list(self.builder.prefix) + _ids(self.tokenizer, ["Score this probe, please."])[0]
        x = torch.tensor([probe], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            ref = self.model(input_ids=x, use_cache=False).logits[0].float()
            tol = 1e-4 * max(1.0, float(ref.abs().max()))
            try:
                hidden = self.model.get_decoder()(input_ids=x, use_cache=False).last_hidden_state
                got = self.model.get_output_embeddings()(hidden)[0].float()
                if got.shape == ref.shape and float((got - ref).abs().max()) <= tol:
                    return "split"
            except Exception:
                pass
            try:
                mask = torch.ones_like(x, dtype=torch.bool)
                mask[0, 0] = False
                got = self.model(input_ids=x, use_cache=False, logits_to_keep=mask).logits
                got = got.reshape(-1, ref.shape[-1]).float()
                if got.shape[0] == ref.shape[0] - 1 and float((got - ref[1:]).abs().max()) <= tol:
                    return "keep"
            except Exception:
                pass
        return "full"


def cache_argument(model: Any) -> str:
    """The forward() argument that takes a key/value cache: `cache` from transformers 5.2x
    (where `past_key_values` warns and is to be removed), `past_key_values` before."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The key/value cache a forward pass returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def as_template(name: str) -> Template:
    """Validate a template name from the command line."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}: choose one of {', '.join(TEMPLATES)}")
    return cast(Template, name)
