"""Answer each surviving instruction with the responder model (greedy by default)."""

from __future__ import annotations

from typing import ClassVar

from evolkit.models.base import Backend, ChatRequest, SamplingParams
from evolkit.records import Record
from evolkit.stages.base import Stage, call_failed, failed_call


class RespondStage(Stage):
    name = "respond"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "input")
    outputs: ClassVar[tuple[str, ...]] = ("output", "meta.response")
    roles: ClassVar[tuple[str, ...]] = ("responder",)
    responder: Backend

    def __init__(self, params: SamplingParams | None = None) -> None:
        self.params = params or SamplingParams(temperature=0.0, max_new_tokens=512)

    def sampling(self, rec: Record) -> SamplingParams:
        """The sampling of `rec`'s answer: the stage's own, unless a subclass varies it."""
        return self.params

    def process(self, batch: list[Record]) -> list[Record]:
        requests = [
            ChatRequest.of([{"role": "user", "content": r.query}], self.sampling(r)) for r in batch
        ]
        out = []
        for rec, gen in zip(batch, self.responder.generate(requests), strict=True):
            if failed_call(gen):
                out.append(call_failed(rec, gen, self.name, "responder call"))
                continue
            out.append(
                rec.model_copy(
                    update={
                        "output": gen.text.strip(),
                        "meta": {
                            **rec.meta,
                            "response": {
                                "model": self.responder.model_id,
                                "finish_reason": gen.finish_reason,
                                "tokens": gen.completion_tokens,
                                "error": gen.error,
                            },
                        },
                    }
                )
            )
        return out
