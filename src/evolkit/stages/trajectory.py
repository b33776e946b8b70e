"""Reading what an evolver writes when it follows a multi-part evolving method (Auto
Evol-Instruct), and what an optimizer writes when it improves a method. Pure functions: no model.

A method asks for sections (methods, plan, rewrite, review, final instruction). Models, and small
ones most of all, write them in many shapes: markdown headings (``## Final instruction``), bold
labels (``**Final Instruction:**``), the paper-style ``#Final Rewritten Instruction#``, a label
with the text on the same line or on the next, sections missing or repeated, commentary after the
rewrite. The parser reads all of those; what it still cannot read is reported with a reason
(`Trajectory.problem`), which the scenario counts as the named failure ``unparsed``.

The methods section of each trajectory is also read as a list, normalised and counted, so two
evolvers can be compared by how many distinct ways of making an instruction harder they list.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# -- section headings --------------------------------------------------------------------------

#: Canonical section names, in the order a method asks for them; "input" is the model echoing
#: the instruction it was given, whose text is never taken for a rewrite.
SECTIONS = ("methods", "plan", "rewrite", "review", "final", "input")

# Labels that are a heading in any shape: alone on a line, before a colon, or in markdown.
_EXACT = {
    **dict.fromkeys(
        (
            "methods",
            "method",
            "methods list",
            "list of methods",
            "possible methods",
            "methods to use",
            "chosen methods",
            "ways to make it more complex",
            "techniques",
            "strategies",
        ),
        "methods",
    ),
    **dict.fromkeys(("plan", "planning", "plan of action", "step by step plan"), "plan"),
    **dict.fromkeys(
        (
            "rewrite",
            "rewriting",
            "rewritten instruction",
            "rewritten prompt",
            "rewritten version",
            "new instruction",
            "new prompt",
            "draft",
            "first draft",
        ),
        "rewrite",
    ),
    **dict.fromkeys(("review", "reviewing", "check", "self review", "feedback"), "review"),
    **dict.fromkeys(
        (
            "final",
            "final instruction",
            "final rewritten instruction",
            "finally rewritten instruction",
            "final rewritten prompt",
            "final prompt",
            "final version",
            "final rewrite",
            "final answer",
            "final output",
            "final result",
        ),
        "final",
    ),
    **dict.fromkeys(
        (
            "instruction",
            "instructions",
            "instruction to rewrite",
            "original instruction",
            "given instruction",
            "input",
        ),
        "input",
    ),
}

# A possible heading line: optional markdown (#, >, bold/italic marks, the paper-style #Label#),
# optional numbering ("2.", "Step 3:", "Part 1 -"), a label of letters, then a colon, a dash,
# a closing mark or the end of the line, and perhaps text after it.
_HEADING = re.compile(
    r"""^\s*(?:>\s*)?(?P<hashes>\#{1,6}(?!\#))?\s*
    (?P<open>\*{1,3}|_{1,3}|\#)?\s*
    (?P<num>(?:step|part|section)\s*\d+\s*[:.)\-]?\s*|\d+\s*[.)]\s+)?
    (?P<label>[A-Za-z][A-Za-z'’ /\-]{0,60}?)\s*
    (?P<close>\*{1,3}|_{1,3}|\#)?\s*
    (?P<sep>[:：]|\s[-–—]\s|$)\s*
    (?P<close2>\*{1,3}|_{1,3})?\s*
    (?P<rest>.*)$""",
    re.VERBOSE | re.IGNORECASE,
)
_MAX_LABEL_WORDS = 7
_FINAL = re.compile(
    r"\bfinal(ly)?\b.*\b(instruction|prompt|version|rewrite|rewriting|answer|output|result|text)\b"
)


def _label_words(label: str) -> list[str]:
    words = re.sub(r"[^a-z ]", " ", label.lower().replace("’", "'").replace("-", " ")).split()
    while words and words[0] in ("the", "your", "my", "a", "an", "here", "is", "are"):
        words = words[1:]
    return words


def _classify(label: str, decorated: bool, colon: bool) -> str | None:
    """The section a heading label names, or None.

    Exact section names count in any shape. A label before a colon counts only when it names
    the final instruction or the echoed input ("Here is the final rewritten instruction:"),
    since instructions themselves hold colons ("Create a meal plan: ..."); only markdown-marked
    labels ("## Plan for the rewrite") are matched on the section words they contain.
    """
    words = _label_words(label)
    if not words or len(words) > _MAX_LABEL_WORDS:
        return None
    name = " ".join(words)
    if name in _EXACT:
        return _EXACT[name]
    if not (decorated or colon):
        return None
    if _FINAL.search(name) and len(words) <= 5:
        return "final"
    if words[0].startswith(("instruction", "original", "given", "input")) and len(words) <= 4:
        return "input"
    if not decorated:
        return None
    if any(w.startswith(("review", "check", "critique", "reflect", "evaluat")) for w in words):
        return "review"
    if any(w.startswith("plan") for w in words):
        return "plan"
    if any(w.startswith(("method", "technique", "strateg")) or w == "ways" for w in words):
        return "methods"
    if any(w.startswith(("rewrit", "revis", "draft")) for w in words):
        return "rewrite"
    if "final" in words or "finally" in words:
        return "final"
    return None


def heading(line: str) -> tuple[str, str] | None:
    """(section, text after the label on the same line) when `line` is a section heading."""
    m = _HEADING.match(line)
    if not m:
        return None
    decorated = bool(m.group("hashes") or m.group("open") or m.group("close"))
    colon = m.group("sep").strip() != ""
    rest = m.group("rest").strip()
    section = _classify(m.group("label"), decorated, colon)
    if section is None:
        return None
    if m.group("num") and _EXACT.get(" ".join(_label_words(m.group("label")))) != section:
        # Numbered lines are list items unless the label is exactly a section name.
        return None
    if rest and not (decorated or colon):
        return None
    # A closing mark may come after the colon: "**Final instruction:** text".
    rest = re.sub(r"^(\*{1,3}|_{1,3})\s*", "", rest)
    return section, rest


@dataclass(frozen=True)
class Section:
    name: str
    text: str


def split_sections(text: str) -> list[Section]:
    """The text cut at every heading line, in order; text before the first heading is left out.

    Fenced code blocks are kept whole: a line inside one is never taken for a heading.
    """
    sections: list[Section] = []
    name: str | None = None
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        found = None if fenced else heading(line)
        if found:
            if name is not None:
                sections.append(Section(name, "\n".join(lines).strip()))
            name, first = found
            lines = [first] if first else []
        elif name is not None:
            lines.append(line)
    if name is not None:
        sections.append(Section(name, "\n".join(lines).strip()))
    return sections


# -- the final instruction -----------------------------------------------------------------------

_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`", "«": "»"}
_COMMENTARY = re.compile(
    r"(?i)^\s*(this|these|the (above|final|rewritten|new|revised|original)|note\b|notes\b|"
    r"explanation|in this|i |i'?ve|i'?m|here\b|it |by |overall|as you can see|this way)"
)


def clean_instruction(text: str) -> str:
    """The instruction itself: no fences, wrapping quotes or bold marks, no trailing comment."""
    out = text.strip()
    out = re.sub(r"^```[\w-]*\s*\n?|\n?```\s*$", "", out).strip()
    out = re.sub(r"(?m)^\s*>\s?", "", out)  # a blockquote
    out = re.sub(r"^(\*{1,3}|_{1,3})(.+?)\1$", r"\2", out, flags=re.DOTALL).strip()
    if len(out) >= 2 and _QUOTES.get(out[0]) == out[-1]:
        out = out[1:-1].strip()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", out) if p.strip()]
    # Keep the first paragraph always; stop at the first that reads as talk about the rewrite.
    kept = paragraphs[:1]
    for p in paragraphs[1:]:
        if _COMMENTARY.match(p):
            break
        kept.append(p)
    return "\n\n".join(kept).strip()


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^\w ]", " ", text.lower()).split())


def echoes(text: str, method: str) -> bool:
    """True when `text` only repeats a line of the method (a small model copying the prompt,
    e.g. "Write only the final rewritten instruction here.")."""
    key = _key(text)
    if not key:
        return False
    for line in method.splitlines():
        other = _key(line)
        if other and (key == other or (len(key) >= 20 and key in other)):
            return True
    return False


@dataclass(frozen=True)
class Trajectory:
    """What one evolution wrote, read section by section."""

    final: str | None  # the final rewritten instruction; None when it could not be read
    problem: str | None  # why `final` is None
    methods: list[str] = field(default_factory=list)  # the items of the methods section
    sections: list[str] = field(default_factory=list)  # section names found, in order


def parse_trajectory(text: str, method: str = "") -> Trajectory:
    """Read an evolver's answer to a multi-part method.

    The final instruction is the first non-empty final section that is not a copy of a line of
    `method`; text before any heading, and the rewrite section, never stand in for it (a model
    that skipped the final section did not finish the method).
    """
    sections = split_sections(text)
    names = [s.name for s in sections]
    methods = next((method_items(s.text) for s in sections if s.name == "methods"), [])
    finals = [s for s in sections if s.name == "final"]
    if not text.strip():
        return Trajectory(None, "the answer is empty", methods, names)
    if not finals:
        return Trajectory(None, "no final-instruction section", methods, names)
    echoed = False
    for s in finals:
        candidate = clean_instruction(s.text)
        if not candidate:
            continue
        if method and echoes(candidate, method):
            echoed = True
            continue
        return Trajectory(candidate, None, methods, names)
    why = "the final section repeats the method's words" if echoed else "the final section is empty"
    return Trajectory(None, why, methods, names)


# -- the optimizer's improved method ----------------------------------------------------------

_IMPROVED = re.compile(
    r"""^\s*(?:>\s*)?\#{0,6}\s*(?:\*{1,3}|_{1,3}|\#)?\s*(?:\d+[.)]\s*|step\s*\d+\s*[:.)-]?\s*)?
    (?:the\s+|my\s+|here\s+is\s+the\s+|here\s+is\s+an?\s+|here['’]s\s+the\s+)?
    (?:improved|new|optimi[sz]ed|revised|updated|better|rewritten|final)\s+
    (?:evolving\s+|evolution\s+)?method\b[^\n:.]{0,30}?\s*(?:\#|\*{1,3}|_{1,3})?\s*
    (?:[:：]\s*(?:\*{1,3}|_{1,3})?[ \t]*|$)""",
    re.VERBOSE | re.IGNORECASE | re.MULTILINE,
)
# A method written out between the prompt's own <<< >>> marks (small models copy that frame
# instead of writing the heading): a block holding the {instruction} placeholder.
_BLOCK = re.compile(r"(?s)<<<[ \t]*\n(?P<body>.*?\{instruction\}[^\n]*)\n\s*>{2,3}")
_DELIMITED = re.compile(r"(?s)^(<<<|```[\w-]*|\"\"\"|---+)\s*\n(.*?)\n\s*(>>>|```|\"\"\"|---+)\s*$")


@dataclass(frozen=True)
class Candidate:
    method: str | None
    problem: str | None


def parse_candidate(text: str, min_words: int = 12) -> Candidate:
    """The improved method an optimizer wrote: everything after its "Improved method" heading.

    The method has headings of its own, so nothing after the heading is cut, except a wrapping
    fence or delimiter pair. A method shorter than `min_words` words is not a method.
    """
    matches = list(_IMPROVED.finditer(text))
    if not matches:
        # The last block that holds a method; each "<<<" line is tried as a start, since an
        # earlier block may be the copied current method.
        starts = [m.start() for m in re.finditer(r"(?m)^[ \t]*<<<", text)]
        blocks = [b for b in (_BLOCK.match(text, i) for i in starts) if b]
        if blocks:
            return _checked(blocks[-1].group("body").strip(), min_words)
        return Candidate(None, "no improved-method section")
    # The last such heading: optimizers often name the section in their analysis first.
    body = text[matches[-1].end() :].strip()
    m = _DELIMITED.match(body)
    if m:
        body = m.group(2).strip()
    body = re.sub(r"^(<<<|```[\w-]*)\s*\n", "", body)
    body = re.sub(r"\n\s*(>>>|```)\s*$", "", body).strip()
    return _checked(body, min_words)


def _checked(body: str, min_words: int) -> Candidate:
    if len(body.split()) < min_words:
        if not body:
            return Candidate(None, "the improved-method section is empty")
        return Candidate(None, f"the improved method is too short ({len(body.split())} words)")
    return Candidate(body, None)


# -- the methods a trajectory lists -------------------------------------------------------------

_ITEM = re.compile(r"^\s*(?:[-*•+]|\d+\s*[.):]|[a-z]\s*[.)]|\(\d+\)|\(?[ivx]+\))\s+(?P<text>.*)$")
_INLINE_NUMBER = re.compile(r"\s*[;,]?\s+\(?\d+[.)]\s+")
_LABEL_PREFIX = re.compile(r"(?i)^\s*(?:method|way|technique|strategy|step)\s*#?\d*\s*[:.)\-]\s*")


def method_items(section: str) -> list[str]:
    """The items of a methods section: list lines (with continuation lines joined), else the
    lines, else a one-line list split at semicolons or commas."""
    lines = [ln for ln in section.splitlines() if ln.strip()]
    items: list[str] = []
    listed = any(_ITEM.match(ln) for ln in lines)
    for ln in lines:
        m = _ITEM.match(ln)
        if m:
            items.append(m.group("text").strip())
        elif listed and items:
            items[-1] = f"{items[-1]} {ln.strip()}"
        elif not listed:
            items.append(ln.strip())
    # An inline enumeration ("1) narrow the topic; 2) demand a format") is several items.
    items = [p for i in items for p in _INLINE_NUMBER.split(i)]
    if len(items) == 1 and not listed:
        parts = re.split(r"\s*;\s*", items[0])
        if len(parts) == 1:
            # "a, b and c" is three items; "in a logical and coherent way" (no comma) is one.
            parts = re.split(r"\s*,\s*(?:and\s+)?", items[0])
            if len(parts) > 1:
                parts = [*parts[:-1], *re.split(r"\s+and\s+", parts[-1])]
        items = parts
    return [i.strip(" .") for i in items if i.strip(" .")]


# Words that do not tell one method from another ("add a constraint to the instruction").
_FILLER = frozenset(
    "a an the this that it its some more one any each your their instruction instructions "
    "prompt prompts task original given".split()
)
_TRAILING = frozenset("to in of for on into with from about by at as and or".split())
_IRREGULAR = {
    "made": "make",
    "written": "write",
    "wrote": "write",
    "writing": "write",
    "given": "give",
    "gave": "give",
    "chosen": "choose",
    "taken": "take",
    "took": "take",
    "children": "child",
    "using": "use",
    "used": "use",
    "uses": "use",
    "deeper": "deep",
    "harder": "hard",
    "longer": "long",
    "broader": "broad",
}


def fold(word: str) -> str:
    """A light English lemma key: plural and verb endings folded, a doubled final consonant and
    a final silent e dropped, so "add", "adds", "adding" and "added" share one key (as do
    "make"/"making", "constraint"/"constraints"). Keys need not be words: they are compared,
    and the commonest surface form is what is shown."""
    w = _IRREGULAR.get(word, word)
    if len(w) < 3 or not w.isalpha():
        return w
    if len(w) > 3:
        w = _strip_suffix(w)
    # Undoubled whether or not a suffix went ("add" and "adding" both give "ad").
    if len(w) >= 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]
    if len(w) > 3 and w.endswith("e") and not w.endswith(("ee", "ie")):
        w = w[:-1]
    return w


def _strip_suffix(w: str) -> str:
    if w.endswith(("ies", "ied")) and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "ches", "shes", "xes", "zes")) or (w.endswith("ses") and len(w) > 5):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is", "ous")):
        return w[:-1]
    if w.endswith("ing") and len(w) >= 6 and re.search(r"[aeiouy]", w[:-3]):
        return w[:-3]
    if w.endswith("ed") and len(w) >= 5 and re.search(r"[aeiouy]", w[:-2]):
        return w[:-2]
    return w


def normalize_method(item: str) -> tuple[str, str]:
    """(key, shown form) of one listed method, or ("", "") when nothing is left.

    Lowercased, numbering and "Method 2:" labels dropped; a name before a colon or dash
    ("Add a constraint: the poem must rhyme") stands for the item; punctuation, articles and
    filler words go; each word is folded with `fold`.
    """
    text = _LABEL_PREFIX.sub("", item.strip().lower())
    text = re.sub(r"[*_`#]", "", text)
    head = re.split(r"\s*[:–—]\s+|\s+-\s+|\s*\(", text, maxsplit=1)[0]
    if head and len(head.split()) <= 8:
        text = head
    words = [w for w in re.sub(r"[^\w\s']", " ", text).replace("'", "").split()]
    words = [w for w in words if w not in _FILLER and not w.isdigit()]
    while words and words[-1] in _TRAILING:
        words.pop()
    while words and words[0] in _TRAILING:
        words.pop(0)
    if not words:
        return "", ""
    return " ".join(fold(w) for w in words), " ".join(words)


@dataclass
class MethodCounts:
    """The methods a set of trajectories lists, counted."""

    trajectories: int = 0
    with_methods: int = 0
    listed: int = 0
    keys: Counter[str] = field(default_factory=Counter)
    shown: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, items: Sequence[str]) -> None:
        self.trajectories += 1
        found = [normalize_method(i) for i in items]
        found = [(k, s) for k, s in found if k]
        if found:
            self.with_methods += 1
        for key, surface in found:
            self.listed += 1
            self.keys[key] += 1
            self.shown.setdefault(key, Counter())[surface] += 1

    @property
    def distinct(self) -> int:
        return len(self.keys)

    def to_dict(self, top: int | None = None) -> dict[str, object]:
        ranked = sorted(self.keys.items(), key=lambda kv: (-kv[1], kv[0]))
        if top is not None:
            ranked = ranked[:top]
        return {
            "trajectories": self.trajectories,
            "with_methods": self.with_methods,
            "methods_listed": self.listed,
            "distinct_methods": self.distinct,
            "methods": [
                {"method": self.shown[k].most_common(1)[0][0], "count": n} for k, n in ranked
            ],
        }


def count_methods(lists: Iterable[Sequence[str]]) -> MethodCounts:
    """Count the methods of many trajectories (each given as its list of items)."""
    counts = MethodCounts()
    for items in lists:
        counts.add(items)
    return counts
