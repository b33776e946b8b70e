"""The measures' pure core: judge answer parsers, output-space statistics, diversity."""

from __future__ import annotations

import math

import pytest

from evolkit.errors import EvolkitError
from evolkit.measures import difficulty as dif
from evolkit.measures import diversity as div
from evolkit.measures import output_space as osp
from evolkit.models.base import Generation
from evolkit.prompts import few_shot
from evolkit.records import Record, seed_record
from evolkit.stages.evolve import build_messages

np = pytest.importorskip("numpy")


# -- difficulty ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("hard", "hard"),
        ("Hard", "hard"),
        ("Label: Hard.", "hard"),
        ("very hard", "very hard"),
        ("VERY HARD!", "very hard"),
        ("Very  hard", "very hard"),
        ("**Very easy**", "very easy"),
        ("easy", "easy"),
        (" medium\n", "medium"),
        ("The difficulty is: very hard.", "very hard"),
        ("Hard. hard", "hard"),
    ],
)
def test_parse_label_accepts_the_five_labels(answer: str, label: str) -> None:
    assert dif.parse_label(answer) == label


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "difficult",
        "hardly",
        "medium-hard",
        "hard or very hard",
        "easy, not hard",
        "not hard",
        "extremely hard",
        "4",
        "Level 5",
        "moderate",
    ],
)
def test_parse_label_never_guesses(answer: str) -> None:
    assert dif.parse_label(answer) is None


@pytest.mark.parametrize(
    ("answer", "score"),
    [("72", 72), ("Score: 72", 72), ("72/100", 72), ("72 out of 100", 72), ("0", 0), ("100.", 100)],
)
def test_parse_score_accepts_one_integer_in_range(answer: str, score: int) -> None:
    assert dif.parse_score(answer) == score


@pytest.mark.parametrize("answer", ["", "high", "101", "-5", "72.5", "60 or 70", "150/100"])
def test_parse_score_rejects_the_rest(answer: str) -> None:
    assert dif.parse_score(answer) is None


def test_judge_prompts_are_few_shot_turns_whose_answers_parse() -> None:
    for prompt, parse in (
        ("judge_difficulty_label", dif.parse_label),
        ("judge_difficulty_score", dif.parse_score),
    ):
        shots = few_shot(prompt)
        assert len(shots.examples) >= 5
        for _, answer in shots.examples:
            assert parse(answer) is not None, (prompt, answer)
    labels = {a for _, a in few_shot("judge_difficulty_label").examples}
    assert labels == set(dif.LEVELS)


def test_judge_requests_are_greedy_and_short() -> None:
    req = dif.label_request("Name two rivers.\nin Asia")
    assert req.params.temperature == 0.0 and req.params.greedy
    assert req.params.max_new_tokens == dif.LABEL_MAX_NEW_TOKENS
    roles = [r for r, _ in req.messages]
    assert roles == ["user", "assistant"] * 5 + ["user"]
    assert req.messages[-1][1].endswith("Instruction: Name two rivers.\nin Asia")
    sreq = dif.score_request("Name two rivers.")
    assert sreq.params.greedy and sreq.params.max_new_tokens == dif.SCORE_MAX_NEW_TOKENS
    assert "0 (trivial" in sreq.messages[-1][1]


def test_row_scores_and_run_aggregation() -> None:
    rows = [
        dif.row_scores("hard", "70"),
        dif.row_scores("Very hard.", "90"),
        dif.row_scores("easy", "banana"),
        dif.row_scores("sort of hard-ish?", "30"),
        dif.row_scores(None, None),  # not judged: counts nowhere
    ]
    assert rows[0] == {"difficulty_level": 4.0, "difficulty_score": 70.0}
    assert rows[1] == {"difficulty_level": 5.0, "difficulty_score": 90.0}
    assert rows[2] == {"difficulty_level": 2.0, "difficulty_score_unparsed": 1.0}
    assert rows[3] == {"difficulty_level_unparsed": 1.0, "difficulty_score": 30.0}
    stats = dif.difficulty_stats(rows)
    assert stats.labelled == 3 and stats.label_unparsed == 1
    assert stats.label_counts == {"very easy": 0, "easy": 1, "medium": 0, "hard": 1, "very hard": 1}
    assert stats.hard_share == pytest.approx(2 / 3, abs=1e-6)
    assert stats.scored == 3 and stats.score_unparsed == 1
    assert stats.mean_score == pytest.approx((70 + 90 + 30) / 3, abs=1e-6)
    by_round = dif.difficulty_by_round([(1, rows[0]), (2, rows[1]), (2, rows[2])])
    assert list(by_round) == [1, 2]
    assert by_round[1].hard_share == 1.0 and by_round[2].hard_share == 0.5
    assert by_round[2].mean_score == 90.0
    assert not dif.difficulty_stats([{}]).measured
    # A stored level outside 1-5 (a hand-edited file) is unparsed, not wrapped around.
    odd = dif.difficulty_stats([{"difficulty_level": 0.0}, {"difficulty_level": 7.0}])
    assert odd.labelled == 0 and odd.label_unparsed == 2


# -- output space ----------------------------------------------------------------------------


def test_top1_probs_drops_non_finite_values() -> None:
    assert osp.top1_probs([0.0, math.log(0.5), -math.inf, math.nan]) == [1.0, 0.5]


def test_top1_logprobs_prefers_the_best_alternative() -> None:
    gen = Generation(text="ab", token_logprobs=[-0.5, -0.1], top_logprobs=[[("a", -0.2)], []])
    assert osp.top1_logprobs(gen) == [-0.2, -0.1]
    assert osp.top1_logprobs(Generation(text="x")) is None


def test_row_output_space_exact_numbers() -> None:
    probs = [0.95, 0.5, 1.0, 0.25, 0.5, 0.75]
    row = osp.RowOutputSpace.from_logprobs([math.log(p) for p in probs])
    assert row.first == pytest.approx(probs[:5])
    assert row.all == pytest.approx(probs)
    s = row.scores()
    assert s["top1_first5_mean"] == pytest.approx(3.2 / 5, abs=1e-6)
    assert s["top1_mean"] == pytest.approx(3.95 / 6, abs=1e-6)
    assert s["top1_above_0.9"] == pytest.approx(2 / 6, abs=1e-6)
    assert s["top1_tokens"] == 6.0
    assert row.meta()["top1"] == pytest.approx(probs)
    assert osp.RowOutputSpace.from_logprobs([]).scores() == {}


def test_distribution_exact_histogram_and_density() -> None:
    d = osp.distribution([0.05, 0.15, 0.95, 0.96], bins=10)
    assert d.n == 4
    assert d.hist_counts == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert d.mean == pytest.approx(0.5275)
    assert d.median == pytest.approx(0.55)
    assert d.share_above_0_9 == 0.5
    assert d.density_x is not None and d.density_y is not None
    assert d.density_x[0] == 0.0 and d.density_x[-1] == 1.0
    # Reflected at both ends, the density keeps its whole mass inside [0, 1].
    assert np.trapezoid(d.density_y, d.density_x) == pytest.approx(1.0, abs=0.02)
    assert max(d.density_y[:20]) > 0 and max(d.density_y[-10:]) > max(d.density_y[40:60])
    same = osp.distribution([1.0, 1.0])
    assert same.density_x is None and same.mean == 1.0 and same.share_above_0_9 == 1.0
    empty = osp.distribution([])
    assert empty.n == 0 and empty.mean is None and sum(empty.hist_counts) == 0


def test_run_distributions_first_five_per_row() -> None:
    rows = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], None, [], [0.95]]
    out = osp.run_distributions(rows)
    assert out["first5"].n == 6
    assert out["first5"].mean == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.95) / 6, abs=1e-6)
    assert out["all"].n == 8


def test_regeneration_request_replays_the_evolve_prompt_greedily() -> None:
    child = Record(
        id="c1",
        instruction="Plan a picnic for eight.",
        round=1,
        operation="deepen",
        parent_id="p1",
        meta={"parent": {"instruction": "Plan a picnic.", "input": ""}},
    )
    req = osp.regeneration_request(child)
    assert req is not None
    assert req.message_dicts() == build_messages("deepen", "Plan a picnic.")
    assert req.params.greedy and req.params.logprobs
    assert req.params.max_new_tokens == osp.DEFAULT_MAX_NEW_TOKENS
    assert osp.regeneration_request(seed_record("Plan a picnic.")) is None


# -- diversity -------------------------------------------------------------------------------

FIXED = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]


def test_nearest_neighbours_exact_distances() -> None:
    d, j = div.nearest_neighbours(FIXED)
    assert d == pytest.approx([0.2, 0.2, 0.4, 1.0], abs=1e-6)
    assert list(j) == [1, 0, 1, 2]


def test_nearest_neighbours_within_groups() -> None:
    d, j = div.nearest_neighbours([*FIXED, [0.6, 0.8]], groups=[1, 1, 2, 2, 3])
    assert d[:4] == pytest.approx([0.2, 0.2, 1.0, 1.0], abs=1e-6)
    assert list(j[:4]) == [1, 0, 3, 2]
    assert math.isnan(d[4]) and j[4] == -1  # alone in its round


def test_blocked_search_equals_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = div.normalize_rows(rng.normal(size=(57, 8)))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    want = 1.0 - sims.max(axis=1)
    monkeypatch.setattr(div, "_BLOCK_FLOATS", 57 * 5)  # blocks of 5 rows, the last one short
    d, j = div.nearest_neighbours(x, method="exact")
    assert d == pytest.approx(want, abs=1e-5)
    assert list(j) == list(sims.argmax(axis=1))


def test_exact_duplicates_are_at_distance_zero() -> None:
    d, _ = div.nearest_neighbours([[0.3, 0.4], [0.6, 0.8], [0.0, 1.0]])
    assert d[0] == pytest.approx(0.0, abs=1e-6) and d[1] == pytest.approx(0.0, abs=1e-6)


def test_faiss_search_agrees_with_exact() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16))
    x[5] = x[7]  # a duplicate pair: each must find the other, not itself
    d_exact, _ = div.nearest_neighbours(x, method="exact")
    d_faiss, j_faiss = div.nearest_neighbours(x, method="faiss")
    assert d_faiss == pytest.approx(d_exact, abs=1e-4)
    assert d_faiss[5] == pytest.approx(0.0, abs=1e-5) and j_faiss[5] == 7


def test_diversity_stats_counts_near_duplicates() -> None:
    s = div.diversity_stats([0.01, 0.049, 0.05, 0.3, None, math.nan], ["a b", "a c"])
    assert s.n == 4
    assert s.near_duplicates == 2
    assert s.mean_min_distance == pytest.approx((0.01 + 0.049 + 0.05 + 0.3) / 4, abs=1e-6)
    assert sum(s.hist_counts) == 4
    assert s.distinct == {"1": 0.75, "2": 1.0, "3": None}


def test_distinct_n_exact() -> None:
    texts = ["The cat sat.", "the cat ran"]
    assert div.distinct_n(texts, 1) == pytest.approx(4 / 6, abs=1e-6)
    assert div.distinct_n(texts, 2) == pytest.approx(3 / 4, abs=1e-6)
    assert div.distinct_n(texts, 3) == 1.0
    assert div.distinct_n(["one"], 2) is None


def test_tokens_are_unicode_aware() -> None:
    assert div.tokens("Naïve CAFÉ, déjà-vu!") == ["naïve", "café", "déjà", "vu"]
    assert div.tokens("我爱你 ok") == ["我", "爱", "你", "ok"]
    assert div.distinct_n(["Ça va? ÇA VA!"], 1) == 0.5


def test_embedding_text_is_the_query() -> None:
    rec = Record(id="x", instruction="Sort these.", input="3 1 2")
    assert div.embedding_text(rec.instruction, rec.input) == rec.query
    assert div.embedding_text("Sort.") == "Sort."


def test_embedder_folder_must_exist(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(EvolkitError, match="not a sentence-transformers model folder"):
        div.Embedder(str(tmp_path))


class _CountingModel:
    """Stands in for a SentenceTransformer: a vector per text, and a count of texts encoded."""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: list[str], **_: object) -> object:
        self.encoded.extend(texts)
        return np.asarray([[len(t), 1.0] for t in texts], dtype=np.float32)

    def get_sentence_embedding_dimension(self) -> int:
        return 2


def test_embedder_caches_texts_and_bounds_the_cache(tmp_path: pytest.TempPathFactory) -> None:
    (tmp_path / "modules.json").write_text("[]")  # type: ignore[operator]
    emb = div.Embedder(str(tmp_path), cache_size=2)
    fake = _CountingModel()
    emb._model = fake
    first = emb.encode(["aa", "b", "aa"])
    assert fake.encoded == ["aa", "b"]
    assert first[0].tolist() == first[2].tolist() == [2.0, 1.0]
    emb.encode(["b"])
    assert fake.encoded == ["aa", "b"]
    emb.encode(["ccc"])  # evicts the least recently used ("aa")
    emb.encode(["aa"])
    assert fake.encoded == ["aa", "b", "ccc", "aa"]


@pytest.mark.slow
def test_minilm_paraphrase_is_closer_than_an_unrelated_instruction() -> None:
    pytest.importorskip("sentence_transformers")
    emb = div.get_embedder()
    assert emb is div.get_embedder(div.DEFAULT_EMBEDDER)  # loaded once per process
    base = "How can I bake bread at home without a bread machine?"
    para = "What is a simple way to make bread at home if I don't have a bread maker?"
    other = "List three moons of Jupiter and their diameters."
    near, far = div.similarity([base, base], [para, other], emb)
    assert near > far + 0.3
    assert emb.encode([base]).shape == (1, emb.dimension)
    d, j = div.nearest_neighbours(emb.encode([base, para, other]))
    assert list(j) == [1, 0, int(j[2])] and d[0] < 0.5 < d[2]
