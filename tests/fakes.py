"""Scripted backends for fast, deterministic pipeline tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from evolkit.models.base import Backend, ChatRequest, Generation


class ScriptedBackend(Backend):
    """Answers each request with `answer(request)`; counts calls; can fail after N calls."""

    def __init__(
        self,
        answer: Callable[[ChatRequest], str | Generation],
        model_id: str = "scripted",
        fail_after: int | None = None,
    ) -> None:
        super().__init__()
        self.answer = answer
        self.model_id = model_id
        self.fail_after = fail_after
        self.calls = 0

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        out = []
        for req in requests:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("scripted crash")
            self.calls += 1
            got = self.answer(req)
            gen = got if isinstance(got, Generation) else Generation(text=got, completion_tokens=5)
            self.usage.add(gen)
            out.append(gen)
        return out


def last_user(req: ChatRequest) -> str:
    return [c for r, c in req.messages if r == "user"][-1]


def instruction_of(req: ChatRequest) -> str:
    """The instruction an evolve request asks to rewrite (after the 'Instruction: ' label)."""
    return last_user(req).split("Instruction: ", 1)[1]
