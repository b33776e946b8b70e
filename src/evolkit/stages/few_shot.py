"""Turn a few-shot prompt file into chat turns: the examples become earlier exchanges.

A 135M model copies the shape of an answer it has just "given" far more reliably than it follows
a description, so each worked example is replayed as a user turn and an assistant turn, and the
real request comes last in exactly the same shape.
"""

from __future__ import annotations

from evolkit.prompts import few_shot

Message = dict[str, str]


def few_shot_messages(name: str, request: str, **fill: object) -> list[Message]:
    """Messages for prompt file `name` ending with `request`; `{key}` in the task line is filled."""
    shots = few_shot(name)
    task = shots.task
    for key, value in fill.items():
        task = task.replace("{" + key + "}", str(value))
    messages: list[Message] = []
    for example, answer in shots.examples:
        messages.append({"role": "user", "content": f"{task}\n\n{example}"})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": f"{task}\n\n{request}"})
    return messages
