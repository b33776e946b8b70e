"""Evol-Instruct's operations and the prompt each one sends: the domain's choice list.

Kept below the stages (rules, measures and the evolve stage all read it), so nothing that needs
the list of in-depth operations or an operation's prompt has to import a stage.
"""

from __future__ import annotations

from evolkit.prompts import few_shot, text

IN_DEPTH = ("add_constraint", "deepen", "concretize", "add_reasoning", "complicate_input")
IN_BREADTH = ("breadth",)
OPERATIONS = IN_DEPTH + IN_BREADTH


def build_messages(operation: str, instruction: str) -> list[dict[str, str]]:
    """The chat an evolver continues: our system line, the operation's worked examples
    replayed as earlier turns, then the instruction in the very same shape."""
    shots = few_shot(f"evolve_{operation}")
    messages = [{"role": "system", "content": text("evolve_system")}]
    for before, after in shots.examples:
        messages.append({"role": "user", "content": f"{shots.task}\nInstruction: {before}"})
        messages.append({"role": "assistant", "content": after})
    messages.append({"role": "user", "content": f"{shots.task}\nInstruction: {instruction}"})
    return messages
