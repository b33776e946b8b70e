"""Our own decode loop for the local backend: per-request sampling, slot refill, shared prefixes.

Three things transformers' `generate` does not do for us, and why each matters here:

- **Per-request sampling.** Each row draws from its own `torch.Generator`, seeded by the
  request, and applies its own temperature, top-p and repetition penalty. A row's tokens
  therefore depend on nothing but its request (batch-mates, batch size and order change only
  floating-point noise), which lets any engine partition the rows any way it likes.
- **Continuous batching.** A row that stops leaves its slot at once and a waiting request takes
  it, so a batch never idles behind one rewrite that loops to the token cap.
- **Shared-prefix reuse.** Prompts of one evolve operation share a system line and worked
  examples (hundreds of tokens) and differ only in the last few dozen. That prefix is computed
  once, its key/value states are copied into every row that starts with it, and it is kept
  (within a memory bound) for the next call that sends the same prefix.

transformers' own continuous batching (`generate_batch`, "paged|sdpa" attention) runs on CPU and
matched one-at-a-time greedy tokens in a check here, but it samples the whole batch from one
shared random stream (a row's tokens would depend on its batch-mates) and, in that check (8 chat
prompts, 24 tokens, embedded model, 2 busy cores), ran at only 1.3x the one-at-a-time rate;
hence this module.

The running batch lives in per-layer key/value buffers with one slot per row and a window of
live columns shared by all slots: every row writes its next token in the same column, rows of
different lengths are right-aligned, and an attention mask hides the columns a row does not own.
Writing in place avoids the full-cache copy `DynamicCache` makes at every step.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.generation.logits_process import LogitsProcessor

from evolkit.models.base import SamplingParams

#: Shared prefixes shorter than this are not worth a separate prefill.
MIN_PREFIX_TOKENS = 16
#: Columns added to the right of the running window when it runs out of room.
_GROWTH = 64

KV = list[tuple[torch.Tensor, torch.Tensor]]


# -- choosing tokens ---------------------------------------------------------------------------
class RowSampler:
    """Chooses one row's tokens: transformers' formulas, the row's own parameters and generator.

    The order and formulas follow transformers' `generate`: repetition penalty (divide positive
    logits, multiply negative ones, for every token already in the sequence, prompt included),
    then temperature, then top-p (drop the least likely tokens whose cumulative probability is
    at most 1 - top_p, always keeping the most likely one), then a multinomial draw; greedy takes
    the arg-max after the penalty. Log-probabilities are taken from the raw logits.
    """

    def __init__(self, params: SamplingParams, seed: int, prompt_ids: Sequence[int]) -> None:
        self.params = params
        penalty = params.repetition_penalty
        self.penalty = None if penalty is None or penalty == 1.0 else float(penalty)
        self._prompt_ids = list(prompt_ids)
        self._seen: torch.Tensor | None = None
        self._seed = seed
        self._generator: torch.Generator | None = None
        self.logprobs: list[float] | None = [] if params.logprobs else None
        self.top: list[list[tuple[int, float]]] | None = (
            [] if params.logprobs and params.top_logprobs > 0 else None
        )

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores the choice is made from (1-D float32 logits in, 1-D scores out)."""
        scores = logits
        if self.penalty is not None:
            seen = self._seen_mask(logits)
            p = self.penalty
            scores = torch.where(seen, torch.where(scores < 0, scores * p, scores / p), scores)
        if self.params.greedy:
            return scores
        if self.params.temperature != 1.0:
            scores = scores / self.params.temperature
        if self.params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative <= (1 - self.params.top_p)
            drop_sorted[-1:] = False
            drop = drop_sorted.scatter(0, order, drop_sorted)
            scores = scores.masked_fill(drop, -float("inf"))
        return scores

    def choose(self, logits: torch.Tensor) -> int:
        """Pick the next token from this row's raw logits and record its log-probabilities."""
        scores = self.process(logits)
        if self.params.greedy:
            token = int(torch.argmax(scores))
        else:
            if self._generator is None:
                self._generator = torch.Generator(device=logits.device).manual_seed(self._seed)
            if self.params.top_p < 1.0:
                # Draw among the tokens top-p kept only: the same distribution, and a draw
                # over a few dozen entries instead of the whole vocabulary.
                kept = torch.isfinite(scores).nonzero().squeeze(-1)
                probs = torch.softmax(scores[kept], dim=-1)
                token = int(kept[torch.multinomial(probs, 1, generator=self._generator)])
            else:
                probs = torch.softmax(scores, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=self._generator))
        if self.logprobs is not None:
            raw = torch.log_softmax(logits, dim=-1)
            self.logprobs.append(float(raw[token]))
            if self.top is not None:
                k = min(self.params.top_logprobs, raw.shape[-1])
                values, ids = torch.topk(raw, k)
                self.top.append(list(zip(ids.tolist(), values.tolist(), strict=True)))
        if self.penalty is not None and self._seen is not None and token < self._seen.shape[0]:
            self._seen[token] = True
        return token

    def _seen_mask(self, logits: torch.Tensor) -> torch.Tensor:
        if self._seen is None:
            vocab = logits.shape[-1]
            seen = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
            ids = [t for t in self._prompt_ids if 0 <= t < vocab]
            if ids:
                seen[torch.tensor(ids, device=logits.device)] = True
            self._seen = seen
        return self._seen


@dataclass
class DecodeRow:
    """One request as the decoder sees it: prompt tokens, its parameters and its seed."""

    ids: list[int]
    params: SamplingParams
    seed: int


@dataclass
class RowOutput:
    """Generated token ids (the stop token included when there was one) and why it ended."""

    ids: list[int]
    finish: str
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None


@dataclass
class _Live:
    """A row being decoded."""

    index: int
    sampler: RowSampler
    max_new: int
    pos: int  # the position of the row's next input token
    ids: list[int] = field(default_factory=list)


def _step(live: _Live, logits: torch.Tensor, eos: set[int]) -> str | None:
    """Choose and record one token; returns the finish reason once the row is done."""
    token = live.sampler.choose(logits)
    live.ids.append(token)
    if token in eos:
        return "stop"
    if len(live.ids) >= live.max_new:
        return "length"
    return None


def _output(live: _Live, finish: str) -> RowOutput:
    return RowOutput(live.ids, finish, live.sampler.logprobs, live.sampler.top)


class ChoiceProcessor(LogitsProcessor):
    """Makes `model.generate` (the static path) choose exactly what `RowSampler` chooses.

    It receives the raw logits of the whole batch, lets each row's sampler pick, and returns
    scores that leave only that token, so `generate`'s own greedy arg-max takes it. The static
    and continuous paths thus share one sampling rule and one random stream per request.
    """

    def __init__(self, samplers: list[RowSampler], eos: set[int]) -> None:
        self.samplers = samplers
        self.eos = eos
        self.done = [False] * len(samplers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, -float("inf"))
        raw = scores.float()
        for row, sampler in enumerate(self.samplers):
            if self.done[row]:
                # `generate` pads finished rows itself; keep their samplers' streams untouched.
                out[row, next(iter(self.eos))] = 0.0
                continue
            token = sampler.choose(raw[row])
            out[row, token] = 0.0
            self.done[row] = token in self.eos
        return out  # type: ignore[return-value]


# -- shared prefixes ---------------------------------------------------------------------------
def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_groups(prompts: Sequence[Sequence[int]], min_prefix: int) -> list[tuple[int, list[int]]]:
    """Split the prompts into groups that share a token prefix: [(prefix length, indices)].

    Sorted prompts that share a prefix are neighbours; each group is a run of neighbours whose
    prefix is the smallest neighbour overlap in the run. The split maximises the prefill tokens
    saved, sum over groups of (size - 1) * prefix, so the rows of each evolve operation form a
    group at their long system + examples prefix rather than all rows at the short prefix they
    share across operations. A prefix always leaves each row at least one token of its own,
    whose logits start the reply. Groups of one have prefix 0.
    """
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
    n = len(order)
    overlap = [
        min(
            common_prefix(prompts[order[i]], prompts[order[i + 1]]),
            len(prompts[order[i]]) - 1,
            len(prompts[order[i + 1]]) - 1,
        )
        for i in range(n - 1)
    ]
    best = [0] * (n + 1)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1], j - 1
        shared = None
        for i in range(j - 2, -1, -1):
            shared = overlap[i] if shared is None else min(shared, overlap[i])
            if shared < min_prefix:
                break
            gain = best[i] + (j - i - 1) * shared
            if gain > best[j]:
                best[j], cut[j] = gain, i
    groups: list[tuple[int, list[int]]] = []
    j = n
    while j > 0:
        i = cut[j]
        members = [order[k] for k in range(i, j)]
        size = min(overlap[i : j - 1]) if j - i > 1 else 0
        groups.append((size if size >= min_prefix else 0, members))
        j = i
    groups.reverse()
    return groups


def _states(cache: Any) -> KV:
    """A plain cache's per-layer (keys, values)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _kv_bytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixStore:
    """Key/value states of recent shared prefixes (batch of one), least recently used first out.

    Entries are never written to: rows copy them into their own buffers.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self.bytes = 0

    def best(self, tokens: Sequence[int]) -> tuple[KV | None, int]:
        """The stored entry sharing the longest prefix with `tokens`, and that length."""
        found: tuple[int, ...] | None = None
        length = 0
        for key in self.entries:
            n = common_prefix(key, tokens)
            if n > length:
                found, length = key, n
        if found is None:
            return None, 0
        self.entries.move_to_end(found)
        return self.entries[found], length

    def put(self, tokens: Sequence[int], kv: KV) -> None:
        key = tuple(tokens)
        size = _kv_bytes(kv)
        if key in self.entries or size > self.max_bytes:
            return
        self.entries[key] = kv
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= _kv_bytes(old)


# -- the running batch -------------------------------------------------------------------------
class _Slots:
    """Key/value buffers of the running batch: [slots, kv heads, capacity, head dim] per layer.

    Columns [start, end) are live; every slot writes its next token at column `end`. A slot's
    mask row marks the columns that belong to its row; all mask bits outside [start, end) are
    kept False so a row placed further left never sees stale columns.
    """

    def __init__(self, like: KV, rows: int, width: int, device: torch.device) -> None:
        capacity = width + _GROWTH
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for k, v in like:
            self.k.append(k.new_zeros((rows, k.shape[1], capacity, k.shape[3])))
            self.v.append(v.new_zeros((rows, v.shape[1], capacity, v.shape[3])))
        self.mask = torch.zeros(rows, capacity, dtype=torch.bool, device=device)
        self.start = self.end = width
        self.cache = Cache(layers=[_SlotLayer(self, i) for i in range(len(like))])

    @property
    def slots(self) -> int:
        return self.mask.shape[0]

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def relayout(self, keep: list[int] | None, left: int, right: int) -> None:
        """Copy the live window of the kept slots into fresh buffers with room on both sides."""
        width = self.end - self.start
        index = None if keep is None else torch.tensor(keep, device=self.mask.device)
        capacity = left + width + right
        for layer in range(len(self.k)):
            for buffers in (self.k, self.v):
                old = buffers[layer]
                if index is not None:
                    old = old.index_select(0, index)
                new = old.new_zeros((old.shape[0], old.shape[1], capacity, old.shape[3]))
                new[:, :, left : left + width] = old[:, :, self.start : self.end]
                buffers[layer] = new
        mask = self.mask if index is None else self.mask.index_select(0, index)
        self.mask = torch.zeros(mask.shape[0], capacity, dtype=torch.bool, device=mask.device)
        self.mask[:, left : left + width] = mask[:, self.start : self.end]
        self.start, self.end = left, left + width

    def place(self, slot: int, kv: KV, row: int, mask: torch.Tensor) -> None:
        """Put row `row` of a prefill's states into `slot`, its last column at `end - 1`."""
        length = mask.shape[-1]
        if length > self.end:
            self.relayout(None, length - (self.end - self.start) + _GROWTH, _GROWTH)
        first = self.end - length
        if first < self.start:
            self.mask[:, first : self.start] = False
            self.start = first
        for layer, (k, v) in enumerate(kv):
            self.k[layer][slot, :, first : self.end] = k[row]
            self.v[layer][slot, :, first : self.end] = v[row]
        self.mask[slot] = False
        self.mask[slot, first : self.end] = mask

    def trim(self, active: list[int]) -> None:
        """Drop leading columns no running row uses (no copy: the window just starts later)."""
        if not active:
            return
        used = self.mask[active, self.start : self.end].any(dim=0).nonzero()
        first = self.start + int(used[0]) if used.numel() else self.end
        if first > self.start:
            self.mask[:, self.start : first] = False
            self.start = first

    def step_mask(self) -> torch.Tensor:
        """The attention mask of a one-token step; every slot attends to its own new column."""
        if self.end >= self.capacity:
            self.relayout(None, 0, max(_GROWTH, (self.end - self.start) // 4))
        self.mask[:, self.end] = True
        return self.mask[:, self.start : self.end + 1]


class _SlotLayer(DynamicLayer):
    """One model layer's view of `_Slots`: writes the new column in place, returns the window."""

    def __init__(self, slots: _Slots, layer: int) -> None:
        super().__init__()
        self.slots = slots
        self.layer = layer
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.slots
        stop = s.end + key_states.shape[-2]
        s.k[self.layer][:, :, s.end : stop] = key_states
        s.v[self.layer][:, :, s.end : stop] = value_states
        return s.k[self.layer][:, :, s.start : stop], s.v[self.layer][:, :, s.start : stop]

    def get_seq_length(self) -> int:
        return self.slots.end - self.slots.start


# -- the decoder -------------------------------------------------------------------------------
@dataclass
class DecodeStats:
    """What the decoder did, summed over calls (for benchmarks and the report of prefill saved)."""

    rows: int = 0
    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens actually run through the model
    prefix_hits: int = 0  # shared prefixes found (whole or in part) in the store
    steps: int = 0  # one-token decode steps of the running batch
    max_running: int = 0
    seconds: float = 0.0

    @property
    def prefill_saved(self) -> int:
        return self.prompt_tokens - self.prefill_tokens

    def since(self, earlier: DecodeStats) -> DecodeStats:
        """What happened after the snapshot `earlier` (max_running is the overall maximum)."""
        return DecodeStats(
            rows=self.rows - earlier.rows,
            prompt_tokens=self.prompt_tokens - earlier.prompt_tokens,
            prefill_tokens=self.prefill_tokens - earlier.prefill_tokens,
            prefix_hits=self.prefix_hits - earlier.prefix_hits,
            steps=self.steps - earlier.steps,
            max_running=self.max_running,
            seconds=self.seconds - earlier.seconds,
        )


def supports_slots(model: Any) -> bool:
    """Our slot cache stands in for plain full-attention layers only (no sliding windows,
    no linear attention): anything else goes through the static path."""
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class ContinuousDecoder:
    """Runs requests through one running batch of at most `max_rows` rows."""

    def __init__(
        self,
        model: Any,
        eos: set[int],
        pad_id: int,
        max_rows: int,
        store: PrefixStore | None,
        min_prefix: int = MIN_PREFIX_TOKENS,
    ) -> None:
        self.model = model
        self.eos = eos
        self.pad_id = pad_id
        self.max_rows = max(1, max_rows)
        self.store = store
        self.min_prefix = min_prefix
        self.stats = DecodeStats()
        self.device = next(model.parameters()).device

    # -- model calls -------------------------------------------------------------------------
    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Cache
    ) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _new_cache(self, kv: KV | None) -> DynamicCache:
        if kv is None:
            return DynamicCache(config=self.model.config)
        return DynamicCache(ddp_cache_data=kv, config=self.model.config)

    def _prefix(self, tokens: list[int]) -> KV:
        """States of a shared prefix: from the store, extended or computed as needed."""
        base, have = (None, 0) if self.store is None else self.store.best(tokens)
        want = len(tokens)
        if base is not None and have > 0:
            self.stats.prefix_hits += 1
            start = [(k[:, :, :have], v[:, :, :have]) for k, v in base]
            if have == want:
                return start
            cache = self._new_cache(start)
        else:
            have, cache = 0, self._new_cache(None)
        rest = tokens[have:]
        self._forward(
            self._tensor([rest]),
            torch.ones(1, want, dtype=torch.long, device=self.device),
            torch.arange(have, want, device=self.device)[None, :],
            cache,
        )
        self.stats.prefill_tokens += len(rest)
        kv = _states(cache)
        if self.store is not None:
            self.store.put(tokens, kv)
        return kv

    def _prefill(
        self, suffixes: list[list[int]], prefix: KV | None, shared: int
    ) -> tuple[torch.Tensor, KV, torch.Tensor]:
        """Run the rows' own tokens after a shared prefix; left-padded between the two."""
        n = len(suffixes)
        width = max(len(s) for s in suffixes)
        ids = [[self.pad_id] * (width - len(s)) + s for s in suffixes]
        mask = torch.zeros(n, shared + width, dtype=torch.long, device=self.device)
        mask[:, :shared] = 1
        pos = torch.full((n, width), shared, dtype=torch.long, device=self.device)
        for r, s in enumerate(suffixes):
            mask[r, shared + width - len(s) :] = 1
            pos[r, width - len(s) :] = torch.arange(shared, shared + len(s), device=self.device)
        start = None
        if prefix is not None:
            start = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix]
        cache = self._new_cache(start)
        logits = self._forward(self._tensor(ids), mask, pos, cache)
        self.stats.prefill_tokens += sum(len(s) for s in suffixes)
        kv = _states(cache)
        return logits, kv, mask.bool()

    # -- the loop ----------------------------------------------------------------------------
    def run(self, rows: Sequence[DecodeRow]) -> list[RowOutput]:
        t0 = time.perf_counter()
        results: list[RowOutput | None] = [None] * len(rows)
        todo = [i for i, r in enumerate(rows) if r.params.max_new_tokens > 0]
        self.stats.rows += len(rows)
        self.stats.prompt_tokens += sum(len(rows[i].ids) for i in todo)
        for i, r in enumerate(rows):
            if r.params.max_new_tokens <= 0:
                results[i] = RowOutput([], "length")
        groups = self._plan(rows, todo)
        # Waiting rows, a group's rows together (shortest first) so joiners share a prefill;
        # popped from the end.
        waiting = [(g, i) for g, group in enumerate(groups) for i in group.members]
        waiting.reverse()

        slots: _Slots | None = None
        live: list[_Live | None] = []
        while waiting or any(x is not None for x in live):
            while waiting and (slots is None or None in live):
                room = live.count(None) if slots is not None else self.max_rows
                joined = [waiting.pop() for _ in range(min(room, len(waiting)))]
                slots, live = self._admit(joined, rows, groups, slots, live, results)
            active = [s for s, x in enumerate(live) if x is not None]
            if slots is None or not active:
                continue
            if not waiting and len(active) < slots.slots:
                # No one will take the empty slots: stop computing them.
                slots.relayout(active, 0, _GROWTH)
                live = [live[s] for s in active]
                active = list(range(len(live)))
            self.stats.max_running = max(self.stats.max_running, len(active))
            slots.trim(active)
            last = [[x.ids[-1] if x is not None else self.pad_id] for x in live]
            pos = [[x.pos if x is not None else 0] for x in live]
            mask = slots.step_mask()
            logits = self._forward(self._tensor(last), mask, self._tensor(pos), slots.cache)
            slots.end += 1
            self.stats.steps += 1
            for s in active:
                x = live[s]
                assert x is not None
                x.pos += 1
                finish = _step(x, logits[s], self.eos)
                if finish is not None:
                    results[x.index] = _output(x, finish)
                    live[s] = None
                    slots.mask[s] = False
        self.stats.seconds += time.perf_counter() - t0
        return [r if r is not None else RowOutput([], "length") for r in results]

    def _plan(self, rows: Sequence[DecodeRow], todo: list[int]) -> list[_Group]:
        """Groups of rows that share a prefix (shortest rows first within a group); the rows
        that share none go together in one group, so their prefills still batch."""
        if self.store is None:
            return [_Group(0, sorted(todo, key=lambda i: len(rows[i].ids)))]
        groups: list[_Group] = []
        alone: list[int] = []
        for shared, members in plan_groups([rows[i].ids for i in todo], self.min_prefix):
            indices = sorted((todo[k] for k in members), key=lambda i: len(rows[i].ids))
            if shared > 0:
                groups.append(_Group(shared, indices))
                continue
            # A row alone in this call may still start with a prefix an earlier call kept.
            ids = rows[indices[0]].ids
            base, have = self.store.best(ids)
            have = min(have, len(ids) - 1)
            if base is not None and have >= self.min_prefix:
                self.stats.prefix_hits += 1
                kv = [(k[:, :, :have], v[:, :, :have]) for k, v in base]
                groups.append(_Group(have, indices, kv))
            else:
                alone.extend(indices)
        if alone:
            groups.append(_Group(0, sorted(alone, key=lambda i: len(rows[i].ids))))
        return groups

    def _admit(
        self,
        joined: list[tuple[int, int]],
        rows: Sequence[DecodeRow],
        groups: list[_Group],
        slots: _Slots | None,
        live: list[_Live | None],
        results: list[RowOutput | None],
    ) -> tuple[_Slots | None, list[_Live | None]]:
        """Prefill the joining rows (one forward per shared prefix), choose their first token,
        and put the rows that go on into free slots."""
        by_group: dict[int, list[int]] = {}
        for g, idx in joined:
            by_group.setdefault(g, []).append(idx)
        prefilled: list[tuple[KV, torch.Tensor, int, _Live]] = []
        for g, members in by_group.items():
            group = groups[g]
            if group.shared > 0 and group.kv is None:
                group.kv = self._prefix(rows[members[0]].ids[: group.shared])
            prefix, shared = group.kv, group.shared
            group.left -= len(members)
            if group.left == 0:
                group.kv = None  # this call no longer needs it; the store may keep it
            suffixes = [rows[i].ids[shared:] for i in members]
            logits, kv, mask = self._prefill(suffixes, prefix, shared)
            for r, idx in enumerate(members):
                req = rows[idx]
                sampler = RowSampler(req.params, req.seed, req.ids)
                x = _Live(idx, sampler, req.params.max_new_tokens, len(req.ids))
                finish = _step(x, logits[r], self.eos)
                if finish is not None:
                    results[idx] = _output(x, finish)
                else:
                    prefilled.append((kv, mask, r, x))
        if not prefilled:
            return slots, live
        if slots is None:
            width = max(mask.shape[1] for _, mask, _, _ in prefilled)
            slots = _Slots(prefilled[0][0], len(joined), width, self.device)
            live = [None] * len(joined)
        free = [s for s, y in enumerate(live) if y is None]
        for slot, (kv, mask, r, x) in zip(free, prefilled, strict=False):
            slots.place(slot, kv, r, mask[r])
            live[slot] = x
        return slots, live


@dataclass
class _Group:
    """Rows of one call that share `shared` prompt tokens, and those tokens' states once known."""

    shared: int
    members: list[int]
    kv: KV | None = None
    left: int = -1

    def __post_init__(self) -> None:
        self.left = len(self.members)
