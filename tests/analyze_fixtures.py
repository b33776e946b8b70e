"""Stand-ins for the measure roles: an evolver that returns log-probabilities, a judge that
answers both difficulty prompts, and a bag-of-words embedder (no model, picklable for Ray)."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from evolkit.models.base import ChatRequest, Generation
from tests.fakes import ScriptedBackend, instruction_of, last_user

DIM = 1024


class FakeEmbedder:
    """Unit vectors of hashed words: texts sharing words are close, unrelated ones far."""

    model_id = "bag-of-words"

    def __init__(self) -> None:
        self.calls = 0
        self.sizes: list[int] = []

    def encode(self, texts: list[str]) -> Any:
        import numpy as np

        self.calls += 1
        self.sizes.append(len(texts))
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[i, h % DIM] += 1.0
            norm = float(np.linalg.norm(out[i]))
            out[i] = out[i] / norm if norm else out[i]
        return out


def evolver_gen(req: ChatRequest) -> Generation:
    """A rewrite with per-token log-probabilities that depend only on the request."""
    text = instruction_of(req) + " Use exactly three sentences."
    n = len(text.split())
    logprobs = [math.log(0.5 + 0.5 * ((len(text) + k) % 5) / 4) for k in range(n)]
    return Generation(
        text=text,
        completion_tokens=n,
        tokens=text.split(),
        token_logprobs=logprobs,
        top_logprobs=None,
    )


def judge_text(req: ChatRequest) -> str:
    text = last_user(req)
    query = text.rsplit("Instruction: ", 1)[-1]
    if "exactly one label" in text:
        return "hmm, tricky" if "painter" in query else ("hard" if len(query) > 40 else "easy")
    return f"Score: {min(100, len(query))}"


def measure_backends(fail_judge_after: int | None = None) -> dict[str, ScriptedBackend]:
    return {
        "evolver": ScriptedBackend(evolver_gen, "evolver-x"),
        "judge": ScriptedBackend(judge_text, "judge-x", fail_after=fail_judge_after),
    }
