"""The answering step of an evaluation: each benchmark prompt, alone, answered greedily."""

from __future__ import annotations

from typing import ClassVar

from evolkit.models.base import Backend, ChatRequest, SamplingParams
from evolkit.records import Record
from evolkit.stages.base import Stage, call_failed, failed_call


class AnswerStage(Stage):
    """Like the respond stage, but the answer is stored exactly as the model wrote it.

    A benchmark's checkers judge the text as written (lm-eval does not strip it): leading or
    trailing whitespace and newlines can decide a strict verdict, so nothing is trimmed here.
    """

    name = "answer"
    inputs: ClassVar[tuple[str, ...]] = ("instruction",)
    outputs: ClassVar[tuple[str, ...]] = ("output", "meta.response")
    roles: ClassVar[tuple[str, ...]] = ("responder",)
    responder: Backend

    def __init__(self, max_new_tokens: int) -> None:
        self.params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)

    def process(self, batch: list[Record]) -> list[Record]:
        requests = [
            ChatRequest.of([{"role": "user", "content": r.instruction}], self.params) for r in batch
        ]
        out = []
        for rec, gen in zip(batch, self.responder.generate(requests), strict=True):
            if failed_call(gen):
                out.append(call_failed(rec, gen, self.name, "answer call"))
                continue
            response = {
                "model": self.responder.model_id,
                "finish_reason": gen.finish_reason,
                "completion_tokens": gen.completion_tokens,
            }
            out.append(
                rec.model_copy(
                    update={"output": gen.text, "meta": {**rec.meta, "response": response}}
                )
            )
        return out
