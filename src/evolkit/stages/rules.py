"""Elimination rules for evolved instructions, each named and switchable.

The original method's four rules (no information gain, a "sorry" short response, a response of
only punctuation and stop words, copied meta-prompt words) plus what small models need in
practice: empty or truncated text, asking back or answering instead of rewriting, no growth,
duplicates and a length cap. A rule returns a reason string when it eliminates a row.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from evolkit.prompts import few_shot
from evolkit.records import Record

# Our own short list of English function words: a response made only of these says nothing.
STOP_WORDS = frozenset(
    """
    a an the and or but if then so of to in on at by for with from as is are was were be
    been being am do does did done have has had having i me my we our you your he him his
    she her it its they them their this that these those there here what which who whom
    whose when where why how not no nor yes all any some each few more most other such only
    own same than too very can could will would shall should may might must just also about
    into over under again further once up down out off ok okay oh um uh well
    """.split()
)

META_PROMPT_PHRASES = (
    "given prompt",
    "rewritten prompt",
    "#rewritten prompt#",
    "#given prompt#",
    "rewritten instruction",
    "new instruction:",
    "instruction:",
    "rewrite:",
    "the instruction above",
    "make the instruction",
    "add one more requirement",
    "10 to 20 words",
)

NOT_AN_INSTRUCTION = re.compile(
    r"(?i)^\s*(sure\b|certainly\b|of course\b|understood\b|thank you|thanks\b|okay\b|ok\b|"
    r"i'?m ready|i am ready|i'?d be happy|i would be happy|i'?ll |i will |as an ai|hello\b|hi\b|"
    r"here is|here's|great\b|absolutely\b|no problem)"
)
ASKS_BACK = re.compile(
    r"(?i)(please provide|what'?s your request|what is your request|how can i (help|assist)|"
    r"what would you like|which instruction|provide the (instruction|prompt|text)|"
    r"i need more (information|context)|could you (please )?(clarify|provide))"
)


# Verbs that commonly open an instruction. An evolved text with no question and no sentence
# opening with one of these is usually a statement or an answer, not an instruction.
INSTRUCTION_VERBS = frozenset(
    """
    add analyze answer apply arrange ask assess assign build calculate categorize change
    check choose classify come compare compile complete compose compute consider construct
    convert correct count create debug decide define derive describe design detect determine
    develop devise discuss draft draw edit elaborate estimate evaluate examine explain
    explore express extract fill find fix focus format generate give group guess help
    highlight identify illustrate imagine implement improve include indicate infer interpret
    introduce invent judge justify label list locate make map match measure mention modify
    name note offer order organize outline paraphrase pick plan point predict prepare
    present pretend produce propose prove provide put rank rate read recommend reformulate
    rephrase reply report represent respond restate review revise rewrite say schedule score
    select share show simplify sketch solve sort specify state suggest summarize summarise
    support tell test think transform translate try turn use verify weigh write brainstorm
    craft enumerate recall recite reflect research retell conduct
    """.split()
)
QUESTION_OPENERS = frozenset(
    """
    what which who whom whose when where why how is are was were do does did can could would
    should will shall may might have has am
    """.split()
)


def looks_like_instruction(text: str) -> bool:
    """A cheap test that the text asks for something: a question, or an imperative clause.

    Question words count only where a sentence starts ("Which city ..."): inside a sentence they
    are relative clauses ("..., where we need to find ...") and prove nothing. Imperative verbs
    count at any clause start ("To add depth, explain ...").
    """
    if "?" in text:
        return True
    for sentence in re.split(r"(?<=[.!:;])\s+|\n+", text):
        first = words(sentence.lower())[:3]
        if not first:
            continue
        if first[0] in QUESTION_OPENERS or first[0] == "please":
            return True
        if first[0] in ("i", "we") and len(first) > 1 and first[1] in ("want", "need", "would"):
            return True
        for clause in re.split(r"(?<=,)\s+", sentence):
            head = words(clause.lower())[:1]
            if head and head[0] in INSTRUCTION_VERBS:
                return True
    return False


def normalize(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces: the key for exact-duplicate checks."""
    table = str.maketrans("", "", string.punctuation)
    return " ".join(text.lower().translate(table).split())


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


@dataclass(frozen=True)
class RuleSettings:
    max_instruction_words: int = 300
    near_duplicate_ratio: float = 0.92
    min_growth: float = 0.8  # in-depth rewrites shorter than this fraction of the parent fail
    sorry_max_words: int = 80


def _parent_text(rec: Record) -> str:
    return str(rec.meta.get("parent", {}).get("instruction", ""))


def rule_empty(rec: Record, s: RuleSettings) -> str | None:
    evo = rec.meta.get("evolution", {})
    if evo.get("error"):
        return f"evolver error: {evo['error']}"
    if not rec.instruction.strip():
        return "the evolved instruction is empty"
    if not words(rec.instruction):
        return "the evolved instruction has no words"
    return None


def rule_truncated(rec: Record, s: RuleSettings) -> str | None:
    if rec.meta.get("evolution", {}).get("finish_reason") == "length":
        return "the evolver hit the token limit before finishing"
    return None


def rule_copies_meta_prompt(rec: Record, s: RuleSettings) -> str | None:
    low = rec.instruction.lower()
    for phrase in META_PROMPT_PHRASES:
        if phrase in low:
            return f"contains meta-prompt words {phrase!r}"
    if rec.operation:
        norm = normalize(rec.instruction)
        to_parent = SequenceMatcher(None, norm, normalize(_parent_text(rec))).ratio()
        for before, after in few_shot(f"evolve_{rec.operation}").examples:
            for example in (before, after):
                ratio = SequenceMatcher(None, norm, normalize(example)).ratio()
                if ratio >= 0.8 and ratio > to_parent:
                    return f"copies a worked example of the prompt: {example[:60]!r}"
    return None


# A sentence where the writer talks about itself ("I'm excited...", "I've loved...") is chatter
# a small model drifted into; requests phrased in the first person ("I want...") are fine.
CHATTER = re.compile(
    r"(?i)(?:^|[.!?,;]\s+|\b(?:and|but|so)\s+)"
    r"(i'm|i am|i've|i have|i can't|i was|i love|i'll|i will|i really)\b"
)


def rule_not_an_instruction(rec: Record, s: RuleSettings) -> str | None:
    text = rec.instruction.strip()
    chatter = CHATTER.search(text)
    if chatter and not CHATTER.search(_parent_text(rec)):
        return f"drifts into first-person chatter: {text[chatter.start() :][:40]!r}"
    if ASKS_BACK.search(text):
        return "asks back instead of rewriting"
    if NOT_AN_INSTRUCTION.match(text):
        return f"reads as a reply, not an instruction: {text[:40]!r}"
    if not looks_like_instruction(text):
        return f"reads as a statement, not a request (no question, no imperative): {text[:40]!r}"
    return None


def rule_repetitive(rec: Record, s: RuleSettings) -> str | None:
    """Small models loop: the same four words three times over is a loop, not a request."""
    toks = [w.lower() for w in words(rec.instruction)]
    grams = Counter(tuple(toks[i : i + 4]) for i in range(len(toks) - 3))
    if grams:
        gram, n = grams.most_common(1)[0]
        if n >= 3:
            return f"repeats {' '.join(gram)!r} {n} times"
    return None


def rule_unchanged(rec: Record, s: RuleSettings) -> str | None:
    parent = _parent_text(rec)
    if not parent:
        return None
    a, b = normalize(rec.instruction), normalize(parent)
    if a == b:
        return "identical to its parent"
    ratio = SequenceMatcher(None, a, b).ratio()
    if ratio >= s.near_duplicate_ratio:
        return f"near duplicate of its parent (similarity {ratio:.2f})"
    return None


def rule_shrunk(rec: Record, s: RuleSettings) -> str | None:
    from evolkit.stages.evolve import IN_DEPTH

    parent = _parent_text(rec)
    if rec.operation not in IN_DEPTH or not parent:
        return None
    n_new, n_old = len(words(rec.instruction)), len(words(parent))
    if n_new < s.min_growth * n_old:
        return f"an in-depth rewrite shrank the instruction ({n_old} -> {n_new} words)"
    return None


def rule_too_long(rec: Record, s: RuleSettings) -> str | None:
    n = len(words(rec.instruction))
    if n > s.max_instruction_words:
        return f"{n} words, over the cap of {s.max_instruction_words}"
    return None


def rule_response_empty(rec: Record, s: RuleSettings) -> str | None:
    if not words(rec.output):
        return "the response is empty"
    return None


def rule_response_truncated(rec: Record, s: RuleSettings) -> str | None:
    if rec.meta.get("response", {}).get("finish_reason") == "length":
        return "the response hit the token limit (truncated)"
    return None


def rule_sorry(rec: Record, s: RuleSettings) -> str | None:
    n = len(words(rec.output))
    if "sorry" in rec.output.lower() and n < s.sorry_max_words:
        return f"the response says sorry and has {n} words (< {s.sorry_max_words})"
    return None


def rule_punctuation_stopwords(rec: Record, s: RuleSettings) -> str | None:
    toks = [w.lower() for w in words(rec.output)]
    if all(t in STOP_WORDS for t in toks):
        return "the response is only punctuation and stop words"
    return None


RuleFn = Callable[[Record, RuleSettings], "str | None"]

#: Rules that look at the evolved instruction, before a response exists.
INSTRUCTION_RULES: dict[str, RuleFn] = {
    "empty": rule_empty,
    "truncated": rule_truncated,
    "copies_meta_prompt": rule_copies_meta_prompt,
    "not_an_instruction": rule_not_an_instruction,
    "repetitive": rule_repetitive,
    "unchanged": rule_unchanged,
    "shrunk": rule_shrunk,
    "too_long": rule_too_long,
}
#: Rules that look at the response.
RESPONSE_RULES: dict[str, RuleFn] = {
    "response_empty": rule_response_empty,
    "response_truncated": rule_response_truncated,
    "sorry": rule_sorry,
    "punctuation_stopwords": rule_punctuation_stopwords,
}


def first_failure(
    rec: Record,
    rules: Sequence[str],
    settings: RuleSettings,
    table: dict[str, RuleFn] | None = None,
) -> tuple[str, str] | None:
    """The first enabled rule (in table order) that eliminates `rec`, with its reason."""
    table = INSTRUCTION_RULES if table is None else table
    for name, fn in table.items():
        if name in rules:
            reason = fn(rec, settings)
            if reason:
                return name, reason
    return None


#: Rules that need state or a model; implemented by the eliminate stage itself.
SPECIAL_RULES = ("duplicate", "no_information_gain")
ALL_RULES = (*INSTRUCTION_RULES, *SPECIAL_RULES, *RESPONSE_RULES)
