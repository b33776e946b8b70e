"""The stage contract, checked over every stage evolkit ships (evolkit.stages.base says why).

For each stage: it pickles before setup (an engine can ship it to a worker); its roles are known
roles; every output row names its input (same id or parent_id); it writes only the fields it
declares; its declared outputs do not change when a field it does not declare as read changes;
and a partitionable stage gives the same rows for any split of its input, while an
order-dependent one gives the same rows whether it sees the input at once or batch by batch.
A new stage is covered by adding one entry to CASES; a stage with no entry fails the first test.
"""

from __future__ import annotations

import copy
import importlib
import pickle
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import evolkit.stages
from evolkit.evaluate.stage import AnswerStage
from evolkit.models.base import ChatRequest, Generation, SamplingParams
from evolkit.models.scoring import Losses, ScoreItem
from evolkit.records import Record
from evolkit.stages.augment import AugmentStage, ConstraintFilterStage, call_row
from evolkit.stages.auto_evol import (
    MethodEvolveStage,
    OptimizeStage,
    candidate_row,
    universal_method,
)
from evolkit.stages.back_translate import BackTranslateStage
from evolkit.stages.base import ROLES, Stage
from evolkit.stages.compose import ComposeStage
from evolkit.stages.constraints import constraint_row
from evolkit.stages.eliminate import DedupStage, DriftStage, EliminateStage, JudgeStage
from evolkit.stages.evolve import EvolveStage
from evolkit.stages.measure import DifficultyStage, DiversityStage, OutputSpaceStage
from evolkit.stages.quality import QualityJudgeStage
from evolkit.stages.respond import RespondStage
from evolkit.stages.rules import ALL_RULES
from evolkit.stages.sample import FanOutStage, SampledRespondStage
from evolkit.stages.score import ScoreStage
from evolkit.stages.validate_verifiers import ValidateVerifiersStage
from evolkit.stages.verify_responses import VerifyResponsesStage
from evolkit.stages.write_verifiers import WriteVerifiersStage
from tests.analyze_fixtures import FakeEmbedder
from tests.fakes import ScriptedBackend, last_user

# -- stand-ins for the roles --------------------------------------------------------------------

FUNCTION = "def evaluate(response):\n    return len(response.split()) < 6\n"


def evolver_answer(req: ChatRequest) -> str | Generation:
    text = last_user(req)
    if "Write a Python function" in text:
        return (
            f"```python\n{FUNCTION}```\nPASS: Short one.\nPASS: Two words.\n"
            "FAIL: This answer has far too many words in it.\nFAIL: Again this one is too long."
        )
    if "evaluate(response)" in text or "def evaluate" in text:
        return "It checks that the response has fewer than six words."
    if "constraints" in text.lower():
        return "- Answer in one sentence\n- Use no commas\n- End with a question"
    if "Instruction to rewrite:" in text:  # an evolving method (Auto Evol-Instruct)
        seed = text.rsplit("\n", 1)[-1]
        if "painter" in seed:
            return "Sure! Could you please provide more details?"
        return f"Methods:\n- add a limit\nFinal instruction:\n{seed} Use {len(text) % 5 + 2} lines."
    # an evolution: a longer rewrite, seeded by the request (a different text per request),
    # with per-token log-probabilities (the output-space measure asks for them)
    rewrite = text.rsplit("Instruction: ", 1)[-1] + f" Use exactly {len(text) % 7 + 2} sentences."
    words = rewrite.split()
    logprobs = [-((len(text) + i) % 4) / 4 for i in range(len(words))]
    return Generation(rewrite, completion_tokens=len(words), tokens=words, token_logprobs=logprobs)


def judge_answer(req: ChatRequest) -> str:
    text = last_user(req)
    if "exactly one label" in text:
        return "hard" if "poem" in text.rsplit("Instruction:", 1)[-1] else "easy, maybe"
    if "from 0 (trivial" in text:
        return f"Score: {len(text) % 101}"
    if "Description:" in text:
        return "consistent"
    if "Response:" in text:
        return "Score: 9"
    return "Not equal" if len(text) % 2 else "Equal"


def responder_answer(req: ChatRequest) -> str:
    text = last_user(req)
    return "Sorry." if "painter" in text else f"A short answer to {len(text)} chars."


def optimizer_answer(req: ChatRequest) -> str:
    if req.params.seed % 2:
        return "Failed cases: none I can see."
    return (
        f"Improved method:\nRewrite the instruction so it is harder, variant {req.params.seed}, "
        + ("then give the Final instruction: heading.\nInstruction to rewrite:\n{instruction}")
    )


class FakeScorer:
    model_id = "fake-scorer"
    template = "plain"
    max_length = 2048
    head = "full"

    def score(self, items: list[ScoreItem]) -> list[Losses]:
        return [
            Losses(
                loss_q=1.0 + len(i.query) / 100,
                loss_a_given_q=0.5 + len(i.output) / 200,
                loss_a=1.0 + len(i.output) / 150,
                n_q=len(i.query.split()),
                n_a=len(i.output.split()),
                truncated=False,
                n_tokens=len(i.query) + len(i.output),
            )
            if i.output
            else Losses(None, None, None, 0, 0, False, "empty output")
            for i in items
        ]


class FakeResources:
    def __init__(self, sandbox: Any = None) -> None:
        self.objects: dict[str, Any] = {
            "evolver": ScriptedBackend(evolver_answer, "evolver-x"),
            "judge": ScriptedBackend(judge_answer, "judge-x"),
            "responder": ScriptedBackend(responder_answer, "responder-x"),
            "optimizer": ScriptedBackend(optimizer_answer, "optimizer-x"),
            "scorer": FakeScorer(),
            "sandbox": sandbox,
            "embedder": FakeEmbedder(),
        }

    def get(self, role: str) -> Any:
        return self.objects[role]


@pytest.fixture(scope="module")
def resources() -> Iterator[FakeResources]:
    from evolkit.sandbox import Sandbox, SandboxLimits

    with Sandbox(SandboxLimits(wall_seconds=2.0), workers=1) as sb:
        yield FakeResources(sb)


# -- the cases: a stage spec and input rows for it ------------------------------------------


def seeds() -> list[Record]:
    texts = [
        "Write a poem about the sea.",
        "Explain how a bicycle gear works.",
        "Name a famous painter.",
        "Write a poem about the sea.",
        "List three uses of vinegar.",
        "Describe the water cycle.",
    ]
    return [
        Record(id=f"s{i}", instruction=t, meta={"seed_index": i, "seed_id": f"s{i}"})
        for i, t in enumerate(texts)
    ]


def evolved() -> list[Record]:
    stage = EvolveStage(1, attempts=1)
    stage.setup(FakeResources())  # type: ignore[arg-type]
    return stage.process(seeds())


def answered() -> list[Record]:
    stage = RespondStage()
    stage.setup(FakeResources())  # type: ignore[arg-type]
    return stage.process(evolved())


def constraints() -> list[Record]:
    texts = ["Answer in fewer than 6 words", "Use no commas", "answer in fewer than 6 words!"]
    # distinct rows (ids), the first and last the same constraint in other words
    return [
        constraint_row(
            t, "seed", "seed", functions=[FUNCTION], cases=cases(), seed_index=i
        ).model_copy(update={"id": f"c{i}"})
        for i, t in enumerate(texts)
    ]


def cases() -> list[dict[str, Any]]:
    return [
        {"input": "Short one.", "output": True},
        {"input": "Two words.", "output": True},
        {"input": "This answer has far too many words in it.", "output": False},
        {"input": "Again this one is too long for it.", "output": False},
    ]


def composed() -> list[Record]:
    stage = ComposeStage([("q1", "What is rain?"), ("q2", "Why is the sky blue?")], 2)
    return stage.process(constraints())


def fanned_out() -> list[Record]:
    return FanOutStage(2).process(composed())


def responses() -> list[Record]:
    stage = RespondStage()
    stage.setup(FakeResources())  # type: ignore[arg-type]
    return stage.process(composed())


@dataclass
class Case:
    make: Callable[[], Stage]
    rows: Callable[[], list[Record]]


CASES: dict[type[Stage], Case] = {
    EvolveStage: Case(
        lambda: EvolveStage(1, attempts=2, rules=list(ALL_RULES), params=SamplingParams(seed=3)),
        seeds,
    ),
    EliminateStage: Case(lambda: EliminateStage(list(ALL_RULES), "instruction"), evolved),
    DedupStage: Case(DedupStage, evolved),
    JudgeStage: Case(JudgeStage, evolved),
    RespondStage: Case(RespondStage, evolved),
    AnswerStage: Case(lambda: AnswerStage(32), evolved),
    ScoreStage: Case(ScoreStage, answered),
    AugmentStage: Case(
        lambda: AugmentStage(["Use no commas", "End with a question"], 5),
        lambda: [call_row(i) for i in range(4)],
    ),
    ConstraintFilterStage: Case(lambda: ConstraintFilterStage(["Use no commas"]), constraints),
    WriteVerifiersStage: Case(lambda: WriteVerifiersStage(2), constraints),
    ValidateVerifiersStage: Case(lambda: ValidateVerifiersStage(), constraints),
    BackTranslateStage: Case(lambda: BackTranslateStage(1), constraints),
    ComposeStage: Case(
        lambda: ComposeStage([("q1", "What is rain?"), ("q2", "Why is the sky blue?")], 2),
        constraints,
    ),
    VerifyResponsesStage: Case(VerifyResponsesStage, responses),
    FanOutStage: Case(lambda: FanOutStage(3), composed),
    SampledRespondStage: Case(
        lambda: SampledRespondStage(SamplingParams(temperature=0.7, seed=5)), fanned_out
    ),
    QualityJudgeStage: Case(QualityJudgeStage, responses),
    MethodEvolveStage: Case(
        lambda: MethodEvolveStage(
            universal_method(),
            "step0-initial",
            "final",
            SamplingParams(temperature=0.7, seed=3),
            samples=2,
            reject_unparsed=True,
            attempts=2,
            rules=list(ALL_RULES),
        ),
        seeds,
    ),
    OptimizeStage: Case(
        lambda: OptimizeStage(
            universal_method(), "step0-initial", "Case 1\nProblem: none found", SamplingParams()
        ),
        lambda: [candidate_row(1, k) for k in range(1, 5)],
    ),
    DriftStage: Case(DriftStage, evolved),
    OutputSpaceStage: Case(lambda: OutputSpaceStage(12), lambda: seeds() + evolved()),
    DifficultyStage: Case(DifficultyStage, lambda: seeds() + evolved()),
    DiversityStage: Case(DiversityStage, lambda: seeds() + evolved()),
}


def all_stage_classes() -> set[type[Stage]]:
    for mod in pkgutil.iter_modules(evolkit.stages.__path__):
        importlib.import_module(f"evolkit.stages.{mod.name}")
    found: set[type[Stage]] = set()
    todo = list(Stage.__subclasses__())
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return {c for c in found if c.__module__.startswith("evolkit.")}


def test_every_stage_has_a_contract_case() -> None:
    missing = sorted(c.__name__ for c in all_stage_classes() - set(CASES))
    assert not missing, f"add these stages to CASES: {missing}"


# -- the checks ----------------------------------------------------------------------------------

STAGES = sorted(CASES, key=lambda c: c.__name__)
LINEAGE = {"id", "parent_id", "verdicts"}


def built(cls: type[Stage], res: FakeResources) -> Stage:
    stage = copy.deepcopy(CASES[cls].make())
    stage.setup(res)  # type: ignore[arg-type]
    return stage


def dump(rows: list[Record]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json") for r in rows]


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_spec_pickles_and_roles_are_known(cls: type[Stage]) -> None:
    stage = CASES[cls].make()
    again = pickle.loads(pickle.dumps(stage))
    assert type(again) is cls
    assert set(cls.roles) <= set(ROLES)
    assert cls.name and cls.outputs


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_lineage_and_declared_writes(cls: type[Stage], resources: FakeResources) -> None:
    rows = CASES[cls].rows()
    out = built(cls, resources).process(copy.deepcopy(rows))
    assert out, "the case must produce rows"
    by_id = {r.id: r for r in rows}
    declared = set(cls.outputs)
    for row in out:
        source = by_id.get(row.id) or by_id.get(row.parent_id or "")
        assert source is not None, f"{cls.name}: row {row.id} names no input row"
        before, after = source.model_dump(mode="json"), row.model_dump(mode="json")
        for key in set(before) | set(after):
            if key in LINEAGE or before.get(key) == after.get(key):
                continue
            if key in ("meta", "scores"):
                if key in declared:
                    continue
                old, new = before.get(key) or {}, after.get(key) or {}
                changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
                # a stage may drop its own bulky inputs (slim rows); it may not add undeclared
                added = {k for k in changed if k in new}
                extra = {f"{key}.{k}" for k in added} - declared
                assert not extra, f"{cls.name} writes undeclared {sorted(extra)}"
            else:
                assert key in declared, f"{cls.name} writes undeclared field {key!r}"


PERTURB: dict[str, Any] = {
    "instruction": "Completely different words here.",
    "input": "extra context",
    "output": "some other output entirely",
    "operation": "deepen",
    "evolver": "someone-else",
    "round": 7,
}


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_undeclared_fields_do_not_change_declared_outputs(
    cls: type[Stage], resources: FakeResources
) -> None:
    rows = CASES[cls].rows()
    reads = {f for f in cls.inputs if "." not in f}
    poke = {k: v for k, v in PERTURB.items() if k not in reads}
    changed = [r.model_copy(update=poke) for r in rows]
    a = built(cls, resources).process(copy.deepcopy(rows))
    b = built(cls, resources).process(changed)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for field in cls.outputs:
            if "." in field or field in poke:
                continue
            assert getattr(x, field) == getattr(y, field), f"{cls.name}: {field} read undeclared"
        for field in cls.outputs:
            head, _, key = field.partition(".")
            if head in ("meta", "scores") and key:
                assert getattr(x, head).get(key) == getattr(y, head).get(key), (
                    f"{cls.name}: {field} depends on an undeclared field"
                )


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_any_split_gives_the_same_rows(cls: type[Stage], resources: FakeResources) -> None:
    rows = CASES[cls].rows()
    whole = dump(built(cls, resources).process(copy.deepcopy(rows)))
    if cls.whole_step:
        # Engines never split a whole-step stage's input (tests/test_analyze.py checks that on
        # both engines), so what must hold is that a row's result does not depend on where it
        # sits in the batch: the same rows, reversed, give each row the same values.
        assert not cls.partitionable, f"{cls.name}: a whole-step stage is not partitionable"
        back = dump(built(cls, resources).process(copy.deepcopy(rows[::-1])))
        assert sorted(back, key=lambda r: r["id"]) == sorted(whole, key=lambda r: r["id"])
        return
    for cut in (1, len(rows) // 2, len(rows) - 1):
        a, b = copy.deepcopy(rows[:cut]), copy.deepcopy(rows[cut:])
        if cls.partitionable:
            # any worker, any split: fresh stages for each part
            parts = built(cls, resources).process(a) + built(cls, resources).process(b)
        else:
            # one place, in order: the same stage sees the parts one after the other
            stage = built(cls, resources)
            parts = stage.process(a) + stage.process(b)
        assert dump(parts) == whole, f"{cls.name}: split at {cut} changed the rows"


@pytest.mark.parametrize(
    "cls", [c for c in STAGES if not c.partitionable], ids=lambda c: c.__name__
)
def test_order_dependent_stages_resume_from_what_was_kept(
    cls: type[Stage], resources: FakeResources
) -> None:
    if cls.whole_step:
        pytest.skip("a whole-step stage's step is committed all or nothing: it never resumes")
    rows = CASES[cls].rows()
    whole = built(cls, resources).process(copy.deepcopy(rows))
    cut = len(rows) // 2
    first = built(cls, resources).process(copy.deepcopy(rows[:cut]))
    resumed = built(cls, resources)
    resumed.resume([r for r in first if not r.rejected])
    assert dump(first + resumed.process(copy.deepcopy(rows[cut:]))) == dump(whole)
