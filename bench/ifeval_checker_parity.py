"""Check a lighter IFEval checker package against lm-eval's checkers on all 541 prompts.

evolkit scores IFEval with lm-eval's `lm_eval/tasks/ifeval`. This script is how the lighter
PyPI package `if-verifiable` was weighed as a replacement: every prompt gets the same fixed
responses (made from the prompt itself, plus an empty one and one with a `<think>` block), both
packages check them under the same seed, and every instruction's strict and loose verdict is
compared. Any difference disqualifies the lighter package.

    pip install --no-deps if-verifiable==0.1.2 syllapy emoji   # into a scratch environment
    python bench/ifeval_checker_parity.py
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from evolkit.evaluate.ifeval import IFEvalPrompt, load_prompts, score_response, seeded


def responses_for(p: IFEvalPrompt) -> dict[str, str]:
    t = p.prompt
    return {
        "prompt": t,
        "lower": t.lower(),
        "upper": t.upper(),
        "quoted": f'"{t}"',
        "no_comma": t.replace(",", ""),
        "json": json.dumps({"answer": t}),
        "bullets": "* one\n* two\n* three\n" + t,
        "postscript": t + "\nP.S. thanks",
        "think": "<think>plan</think>" + t.lower(),
        "empty": "",
    }


def main() -> None:
    try:
        from if_verifiable.common import evaluate_instructions
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError:
        raise SystemExit("install if-verifiable first (see the docstring)") from None
    prompts = load_prompts()
    checks = 0
    diffs: list[dict[str, Any]] = []
    for p in prompts:
        for name, response in responses_for(p).items():
            ours = score_response(p, response, seed=0)
            with seeded(0):
                theirs, _ = evaluate_instructions(
                    response,
                    list(p.instruction_id_list),
                    [dict(k) for k in p.kwargs],
                    p.prompt,
                    INSTRUCTION_DICT,
                )
            checks += len(p.instruction_id_list)
            strict = [r.strict_pass for r in theirs]
            loose = [r.loose_pass for r in theirs]
            if (strict, loose) != (ours.strict, ours.loose):
                diffs.append({"key": p.key, "response": name, "lm_eval": (ours.strict, ours.loose)})
                diffs[-1]["if_verifiable"] = (strict, loose)
    print(f"{len(prompts)} prompts, {len(prompts) * 10} responses, {checks} instruction checks")
    print(f"differing responses: {len(diffs)}")
    print("by response kind:", dict(Counter(d["response"] for d in diffs)))
    for d in [d for d in diffs if d["response"] not in ("empty", "think")][:10]:
        print(d)


if __name__ == "__main__":
    main()
