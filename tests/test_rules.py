"""Each elimination rule catches what it names and passes a good rewrite."""

from __future__ import annotations

import pytest

from evolkit.records import Record
from evolkit.stages.evolve import clean_evolution
from evolkit.stages.rules import (
    INSTRUCTION_RULES,
    RESPONSE_RULES,
    RuleSettings,
    looks_like_instruction,
)

S = RuleSettings()
PARENT = "Write a poem about autumn."


def child(text: str, op: str = "add_constraint", finish: str = "stop", **kw) -> Record:
    return Record(
        id="c",
        instruction=text,
        operation=op,
        parent_id="p",
        round=1,
        meta={
            "parent": {"instruction": PARENT, "input": ""},
            "evolution": {"finish_reason": finish},
        },
        **kw,
    )


def first_failing(rec: Record, table=INSTRUCTION_RULES) -> str | None:
    for name, fn in table.items():
        if fn(rec, S):
            return name
    return None


GOOD = "Write a poem about autumn in three stanzas, and mention a different tree in each stanza."


def test_good_rewrite_passes_every_instruction_rule() -> None:
    assert first_failing(child(GOOD)) is None


@pytest.mark.parametrize(
    ("text", "finish", "rule"),
    [
        ("", "stop", "empty"),
        ("  ...  ", "stop", "empty"),
        (GOOD, "length", "truncated"),
        ("Here is the #Rewritten Prompt#: write a poem", "stop", "copies_meta_prompt"),
        ("Given prompt: write a poem about autumn leaves falling", "stop", "copies_meta_prompt"),
        # a worked example of the add_constraint prompt, echoed back
        (
            "Write a poem about the sea in exactly four stanzas, and end each stanza "
            "with a question.",
            "stop",
            "copies_meta_prompt",
        ),
        ("I'm ready to help! What's your request?", "stop", "not_an_instruction"),
        ("Sure! Please provide the instruction you want rewritten.", "stop", "not_an_instruction"),
        ("Understood. Which instruction should I rewrite?", "stop", "not_an_instruction"),
        ("The leaves turn red and gold in the cool autumn air.", "stop", "not_an_instruction"),
        ("Write a poem about autumn.", "stop", "unchanged"),
        ("Write a poem about autumn!!", "stop", "unchanged"),
        ("Write a poem.", "stop", "shrunk"),
        ("Write " + " ".join(f"w{i}" for i in range(400)), "stop", "too_long"),
    ],
)
def test_instruction_rules_catch_failures(text: str, finish: str, rule: str) -> None:
    assert first_failing(child(text, finish=finish)) == rule


def test_shrunk_applies_to_in_depth_only() -> None:
    assert first_failing(child("Describe maples?", op="breadth")) is None
    assert first_failing(child("Describe maples?", op="deepen")) == "shrunk"


@pytest.mark.parametrize(
    ("output", "finish", "rule"),
    [
        ("", "stop", "response_empty"),
        ("A long answer " * 10, "length", "response_truncated"),
        ("Sorry, I cannot help with that.", "stop", "sorry"),
        ("It is what it is, and so on.", "stop", "punctuation_stopwords"),
        ("... !!! ?", "stop", "response_empty"),
    ],
)
def test_response_rules(output: str, finish: str, rule: str) -> None:
    rec = child(GOOD, output=output).model_copy(
        update={"meta": {"response": {"finish_reason": finish}}}
    )
    assert first_failing(rec, RESPONSE_RULES) == rule


def test_long_sorry_response_is_kept() -> None:
    text = "Sorry for the wait. " + "Autumn brings crisp air and colourful leaves. " * 12
    rec = child(GOOD, output=text).model_copy(update={"meta": {"response": {}}})
    assert first_failing(rec, RESPONSE_RULES) is None


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Rewritten Prompt: Write a haiku.", "Write a haiku."),
        ('"Write a haiku."', "Write a haiku."),
        ("**New instruction:** Write a haiku.", "Write a haiku."),
        ("#Rewritten Prompt#: Write a haiku.", "Write a haiku."),
        ("Write a haiku.\n\nThis version adds a form constraint.", "Write a haiku."),
        ("Write a haiku.\n\nUse the word 'moon'.", "Write a haiku.\n\nUse the word 'moon'."),
    ],
)
def test_clean_evolution(raw: str, clean: str) -> None:
    assert clean_evolution(raw) == clean


def test_looks_like_instruction() -> None:
    assert looks_like_instruction("Brainstorm three names for a cat.")
    assert looks_like_instruction("Using the table below, find the largest value.")
    assert looks_like_instruction("Is a tomato a fruit")
    assert not looks_like_instruction("These people are both a police and a detective.")


def test_clause_openers_do_not_make_statements_instructions() -> None:
    assert not looks_like_instruction("In this situation, the stereotype can harm many people.")
    assert looks_like_instruction("In this situation, explain how the stereotype can harm people.")
    assert looks_like_instruction("To add depth, explain the idiom 'break a leg'.")


def test_first_person_chatter_is_not_an_instruction() -> None:
    rec = child(
        "Recommend a movie to me. I'm really looking forward to seeing it, I've loved so many."
    )
    assert first_failing(rec) == "not_an_instruction"
    assert first_failing(child("I want a poem about autumn in three stanzas, please.")) is None


@pytest.mark.parametrize(
    "text",
    [
        "The relation between the pairs is a classic example, where we need to find a number.",
        "This haiku is a haiku that incorporates the word, which is often used in poems.",
        "Recommend a movie to a movie buff, but I'm a movie buff, and I'm not sure about it.",
        "Explain human behavior, what it takes to be a hero, what it takes to be a hero, and "
        "what it takes to be a hero.",
    ],
)
def test_small_model_failures_seen_in_the_quickstart_are_caught(text: str) -> None:
    assert first_failing(child(text, op="breadth")) in ("not_an_instruction", "repetitive")
