"""AutoIF step 2: for each constraint the model writes K candidate verifiers with test cases.

A candidate is a Python function `evaluate(response) -> bool` plus example responses labelled
PASS or FAIL. Nothing here runs the code: parsing uses `ast` only, so a hostile answer cannot act
before the sandbox (step 3) executes it. Parsing is deliberately forgiving, because small models
forget fences, leave them open, add example calls after the function, or run out of tokens
mid-line; what cannot be salvaged is rejected with the reason, never guessed.

Accepted case formats: `PASS: text` / `FAIL: text` lines (our prompt's format; also `True:`,
`False:`, `Yes:`, `No:`), JSON objects `{"input": ..., "output": true}` one per line or in a
list, and the original AutoIF shape `{"func": "...", "cases": [...]}` in a JSON block.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from evolkit.models.base import Backend, ChatRequest, SamplingParams
from evolkit.records import Record
from evolkit.stages.base import Stage, call_failed, failed_call
from evolkit.stages.constraints import advance, function_row, slim
from evolkit.stages.few_shot import few_shot_messages

STEP_NAME = "verifiers"
FUNC = "evaluate"

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CASE_LINE = re.compile(
    r"^\s*(?:[-*]\s*)?(?:\*\*)?(pass|fail|true|false|yes|no)(?:\*\*)?\s*:\s*(.+?)\s*$",
    re.IGNORECASE,
)
_POSITIVE = {"pass", "true", "yes"}
# Top-level statements a verifier module may keep; example calls and prints are dropped.
_KEEP_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


@dataclass
class Candidate:
    """One parsed model answer: the function source (or why there is none) and its cases."""

    source: str | None
    cases: list[tuple[str, bool]] = field(default_factory=list)
    problem: str = ""


def _clean_module(code: str) -> tuple[str | None, str]:
    """Normalised source of a module that defines `evaluate`, or None and the reason."""
    code = code.replace("\t", "    ").strip("\n")
    tree: ast.Module | None = None
    lines = code.splitlines()
    # A truncated answer ends mid-statement: drop trailing lines until what is left parses.
    for end in range(len(lines), 0, -1):
        try:
            tree = ast.parse("\n".join(lines[:end]))
            break
        except (SyntaxError, ValueError):
            continue
    if tree is None:
        return None, "syntax_error"
    body: list[ast.stmt] = [node for node in tree.body if isinstance(node, _KEEP_NODES)]
    funcs = [n for n in body if isinstance(n, ast.FunctionDef) and n.name == FUNC]
    if not funcs:
        return None, "no_evaluate_function"
    if not funcs[-1].args.args and not funcs[-1].args.vararg:
        return None, "evaluate_takes_no_argument"
    return ast.unparse(ast.Module(body=body, type_ignores=[])), ""


def _unfenced_code(text: str) -> str | None:
    """The `def evaluate` block of an answer without fences (imports above it included)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("def ")), None)
    if start is None:
        return None
    begin = start
    while begin > 0 and re.match(r"\s*(import |from \S+ import )", lines[begin - 1]):
        begin -= 1
    block = lines[begin : start + 1]
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith((" ", "\t")) and not line.startswith("def "):
            break
        block.append(line)
    return "\n".join(block)


def _json_objects(text: str) -> Iterator[Any]:
    """Every JSON value that can be decoded starting at a `{` or `[` in the text."""
    decoder = json.JSONDecoder()
    i = 0
    while True:
        starts = [p for p in (text.find("{", i), text.find("[", i)) if p >= 0]
        if not starts:
            return
        pos = min(starts)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            i = pos + 1
            continue
        yield value
        i = end


def _case_from(obj: Any) -> tuple[str, bool] | None:
    if not isinstance(obj, dict):
        return None
    inp = obj.get("input", obj.get("response"))
    out = obj.get("output", obj.get("expected", obj.get("label")))
    if isinstance(out, str) and out.strip().lower() in ("true", "false"):
        out = out.strip().lower() == "true"
    if isinstance(inp, str) and isinstance(out, bool):
        return inp, out
    return None


def _unescape(text: str) -> str:
    """`\\n` written literally in a one-line case stands for a line break."""
    return text.replace("\\n", "\n") if "\\n" in text else text


def parse_candidate(text: str, truncated: bool = False) -> Candidate:
    """Extract the function and the test cases from one model answer.

    A `truncated` answer (token limit) loses its last line: a half-written case is a wrong case.
    """
    if truncated and "\n" in text.strip():
        text = text.rstrip().rsplit("\n", 1)[0]
    code_blocks: list[str] = []
    rest = text
    func_from_json: str | None = None
    cases: list[tuple[str, bool]] = []
    for m in _FENCE.finditer(text):
        lang, body = m.group(1).lower(), m.group(2)
        if lang == "json" or body.lstrip().startswith(("{", "[")):
            for obj in _json_objects(body):
                if isinstance(obj, dict) and isinstance(obj.get("func"), str):
                    func_from_json = obj["func"]
                    items = obj.get("cases", [])
                    cases.extend(c for c in map(_case_from, items) if c)
        elif "def " in body:
            code_blocks.append(body)
        rest = rest.replace(m.group(0), "\n")
    if func_from_json is None and not code_blocks:
        for obj in _json_objects(text):
            if isinstance(obj, dict) and isinstance(obj.get("func"), str):
                func_from_json = obj["func"]
                cases.extend(c for c in map(_case_from, obj.get("cases", [])) if c)
    # PASS:/FAIL: lines and JSON case objects anywhere outside the code.
    loose_lines = rest.splitlines() + [
        line for block in code_blocks for line in block.splitlines() if not line[:1].isspace()
    ]
    for line in loose_lines:
        hit = _CASE_LINE.match(line)
        if hit:
            cases.append((_unescape(hit.group(2)), hit.group(1).lower() in _POSITIVE))
    for obj in _json_objects("\n".join(loose_lines)):
        items = obj if isinstance(obj, list) else [obj]
        cases.extend(c for c in map(_case_from, items) if c)

    source: str | None = None
    problem = ""
    candidates = code_blocks or ([func_from_json] if func_from_json else [])
    if not candidates:
        loose = _unfenced_code(text)
        candidates = [loose] if loose else []
    if not candidates:
        problem = "no_code"
    for code in candidates:
        if func_from_json is not None and code is func_from_json and "\\n" in code:
            code = code.replace("\\n", "\n")
        source, problem = _clean_module(code)
        if source is not None:
            break
    return Candidate(source=source, cases=list(dict.fromkeys(cases)), problem=problem)


class WriteVerifiersStage(Stage):
    """One constraint in; out the constraint with its parsed candidates, plus rejected ones.

    Distinct functions and distinct cases are pooled over the K answers, as the original does;
    the constraint itself is dropped here only when no answer held a usable function.
    """

    name = STEP_NAME
    inputs: ClassVar[tuple[str, ...]] = ("instruction",)
    outputs: ClassVar[tuple[str, ...]] = (
        "meta.step",
        "meta.kind",
        "meta.function",
        "meta.function_index",
        "meta.writer",
        "meta.functions",
        "meta.cases",
        "meta.candidates",
    )

    roles: ClassVar[tuple[str, ...]] = ("evolver",)
    evolver: Backend

    def __init__(self, k: int = 8, params: SamplingParams | None = None, seed: int = 0) -> None:
        self.k = k
        self.params = params or SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=512)
        self.seed = seed

    def process(self, batch: list[Record]) -> list[Record]:
        requests = []
        for row in batch:
            messages = few_shot_messages("autoif_verifier", f"Constraint: {row.instruction}")
            for j in range(self.k):
                params = SamplingParams(**{**self.params.__dict__, "seed": self.seed + j})
                requests.append(ChatRequest.of(messages, params))
        gens = self.evolver.generate(requests)
        out: list[Record] = []
        for n, row in enumerate(batch):
            answers = gens[n * self.k : (n + 1) * self.k]
            broken = next((g for g in answers if failed_call(g)), None)
            if broken is not None:
                # One of the K calls never answered: redo the constraint next run rather than
                # judge it on fewer candidates than asked for.
                out.append(call_failed(row, broken, STEP_NAME, "verifier call"))
                continue
            functions: list[str] = []
            cases: list[tuple[str, bool]] = []
            candidates: list[dict[str, Any]] = []
            rejected: list[Record] = []
            for j, gen in enumerate(answers):
                if gen.finish_reason == "error":
                    cand = Candidate(None, [], "model_error")
                else:
                    cand = parse_candidate(gen.text, truncated=gen.finish_reason == "length")
                candidates.append(
                    {
                        "index": j,
                        "raw": gen.text,
                        "finish_reason": gen.finish_reason,
                        "parsed": cand.source is not None,
                        "problem": cand.problem,
                        "cases": len(cand.cases),
                    }
                )
                cases.extend(cand.cases)
                if cand.source is None:
                    detail = f"{cand.problem}; answer starts {gen.text.strip()[:100]!r}"
                    if gen.finish_reason == "error":
                        detail = f"model_error: {gen.error[:200]}"
                    rejected.append(function_row(row, STEP_NAME, j, gen.text, cand.problem, detail))
                elif cand.source in functions:
                    rejected.append(
                        function_row(
                            row,
                            STEP_NAME,
                            j,
                            cand.source,
                            "duplicate_function",
                            f"same code as candidate {functions.index(cand.source)}",
                        )
                    )
                else:
                    functions.append(cand.source)
            cases = list(dict.fromkeys(cases))
            done = advance(
                row,
                STEP_NAME,
                functions=functions,
                cases=[{"input": i, "output": o} for i, o in cases],
                candidates=candidates,
                writer=self.evolver.model_id,
            )
            if not functions:
                done = slim(done, "functions", "cases").reject(
                    "no_usable_function",
                    f"none of {self.k} answers held a parseable evaluate(response) function",
                    STEP_NAME,
                )
            out.append(done)
            out.extend(rejected)
        return out


__all__ = ["Candidate", "WriteVerifiersStage", "parse_candidate"]
