"""Our meta-prompts, kept as text files so they can be read and edited without touching code.

A few-shot file holds a `task:` line and worked examples separated by `---` lines, each with an
`instruction:` and a `rewrite:` part. Small models follow a pattern shown as earlier chat turns
far better than a long description of the task, so the examples are replayed as turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class FewShot:
    task: str
    examples: tuple[tuple[str, str], ...]


@cache
def text(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8").strip()


@cache
def few_shot(name: str) -> FewShot:
    blocks = text(name).split("\n---\n")
    head = blocks[0].strip()
    if not head.startswith("task:"):
        raise ValueError(f"prompt {name}: first block must start with 'task:'")
    examples = []
    for block in blocks[1:]:
        parts: dict[str, list[str]] = {}
        current = ""
        for line in block.strip().splitlines():
            key, sep, rest = line.partition(":")
            if sep and key in ("instruction", "rewrite") and not parts.get(key):
                current = key
                parts[key] = [rest.strip()]
            elif current:
                parts[current].append(line)
        examples.append(("\n".join(parts["instruction"]), "\n".join(parts["rewrite"])))
    return FewShot(task=head[len("task:") :].strip(), examples=tuple(examples))
