"""Elimination rules for evolved instructions, each named and switchable.

The original method's four rules (no information gain, a "sorry" short response, a response of
only punctuation and stop words, copied meta-prompt words) plus what small models need in
practice: empty or truncated text, asking back or answering instead of rewriting, no growth,
duplicates and a length cap. A rule returns a reason string when it eliminates a row.

Rows may be in any language. Lengths, loops and duplicate keys are counted on Unicode tokens;
the English word lists apply only where the text can be English (see `is_english` and
`maybe_english`), and short per-language lists catch replies and questions back in a few other
languages. docs/evol_instruct.md ("Languages") states which rule works for what.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Any

import regex

from evolkit.errors import EvolkitError
from evolkit.prompts import few_shot
from evolkit.prompts.evolve import IN_DEPTH
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
    r"i['’]?m ready|i am ready|i['’]?d be happy|i would be happy|i['’]?ll |i will |as an ai|"
    r"hello\b|hi\b|here is|here['’]s|great\b|absolutely\b|no problem)"
)
ASKS_BACK = re.compile(
    r"(?i)(please provide|what['’]?s your request|what is your request|how can i (help|assist)|"
    r"what would you like|which instruction|provide the (instruction|prompt|text)|"
    r"i need more (information|context)|could you (please )?(clarify|provide))"
)

# Replies, questions back and apologies in languages other than English: short lists of our own,
# one per language and labelled with its ISO 639-1 code. They reject only on what they find, so
# all of them are tried on any text not detected as English (a short text is easily confused
# between neighbours such as es/gl or zh/ja, and none of these openers starts a real
# instruction). Words that also start real requests ("好的文章..." = "a good article ...") must be
# followed by punctuation, a space or the end.
_END = r"(?=[\s\p{P}\p{S}]|$)"
REPLY_OPENERS_BY_LANGUAGE: dict[str, str] = {
    "de": (
        r"(natürlich|gerne?|klar|selbstverständlich|verstanden|danke|vielen dank|hallo|"
        r"kein problem|ok|okay|ich bin bereit|ich helfe (dir|ihnen|gern)|"
        r"hier (ist|sind) (die|deine|ihre|eure) (neue|überarbeitete|umgeschriebene|anweisung))\b"
    ),
    "es": (
        r"(claro|por supuesto|desde luego|entendido|de acuerdo|gracias|hola|con gusto|vale|"
        r"sin problema|estoy list[oa]|encantad[oa] de|"
        r"aquí (está|tienes|tiene) (la|tu|su) (nueva|instrucción|versión|reescritura))\b"
    ),
    "fr": (
        r"(bien sûr|d['’]accord|entendu|compris|merci|bonjour|avec plaisir|volontiers|"
        r"pas de problème|je suis prête?|"
        r"voici (la|votre|ta) (nouvelle|instruction|version|consigne))\b"
    ),
    "zh": (
        rf"(好的|好|当然|当然可以|没问题|可以|明白了?|收到|谢谢|感谢|您好|你好|嗯|行){_END}|"
        r"我来(帮|为|给|写)|我可以(帮|为)|我很(乐意|高兴)|很高兴(为|帮|能)|"
        r"(以下|下面|这)是(改写|重写|修改|更新|优化)(后|过)的"
    ),
    "ja": (
        rf"(はい|もちろん(です)?|了解(です|しました)?|わかりました|分かりました|ありがとう(ございます)?|"
        rf"こんにちは){_END}|承知(しました|いたしました)|かしこまりました|喜んで|"
        r"(以下|こちら)が(書き直|改善|修正|新し)"
    ),
}
# Each phrase names the asker's own task ("... do you want me to rewrite", "which instruction
# should I"): "welche Anweisung in Python ..." or "有什么可以帮助孩子入睡" are real questions.
ASKS_BACK_BY_LANGUAGE: dict[str, str] = {
    "de": (
        r"(wie|womit) kann ich (dir|ihnen|euch) helfen|"
        r"was (möchtest du|möchten sie|willst du), dass ich|"
        r"welche (anweisung|aufgabe) (soll ich|möchtest du|möchten sie)|"
        r"ich brauche mehr (informationen|kontext)|"
        r"bitte (gib|geben sie|nenne|nennen sie|schick|schicken sie|sende|senden sie) "
        r"(mir )?(die|deine|ihre|eine) (anweisung|aufgabe|frage|anfrage)"
    ),
    "es": (
        r"en qué (te |le )?(puedo|podría) ayudar|"
        r"qué (te|le) gustaría que (haga|escriba|reescriba)|"
        r"cuál es tu (pregunta|solicitud|petición)|"
        r"qué (instrucción|tarea) (quieres|quiere|deseas|desea) que|"
        r"necesito más (información|contexto)|"
        r"por favor,? (proporciona|proporcione|indica|indique|dime|dígame|envía|envíe)(me)? "
        r"(la|tu|su|el) (instrucción|pregunta|solicitud|petición|tarea)"
    ),
    "fr": (
        r"comment puis-je (vous|t['’]) ?aider|que (voulez-vous|veux-tu) que je|"
        r"quelle (instruction|consigne) (voulez-vous|veux-tu|dois-je)|"
        r"(veuillez|merci de) (me )?(fournir|donner|indiquer) (la|votre|ta) "
        r"(instruction|consigne|question|demande)"
    ),
    "zh": (
        r"有什么(我)?(可以|能)(帮|为)(您|你)|需要我(做|帮)什么|"
        r"(您|你)(想|希望|需要)让?我(做|改写|重写|写|修改)什么|"
        r"请(提供|发给我)(您|你)(的|要|需要)(指令|问题|文本|内容|要求)|"
        r"哪(条|个)指令(需要|要)我|需要更多(信息|上下文)"
    ),
    "ja": (
        r"何をお手伝い|どのような(ご用件|お手伝い)|"
        r"(指示|ご用件|ご要望)を(教えて|お知らせ|送って)"
    ),
}
APOLOGIES_BY_LANGUAGE: dict[str, str] = {
    "de": r"tut mir leid|entschuldig",
    "es": r"lo siento|lo lamento|disculpa|perdón",
    "fr": r"désolée?|je suis navrée?|excusez-moi",
    "zh": r"抱歉|对不起|很遗憾",
    "ja": r"申し訳|すみません|ごめんなさい",
}


def _compile(table: Mapping[str, str], anchored: bool) -> dict[str, regex.Pattern[str]]:
    start = r"^[\s\p{P}]*(?:" if anchored else "(?:"
    return {lang: regex.compile(start + pattern + ")", regex.I) for lang, pattern in table.items()}


_REPLY_OPENERS = _compile(REPLY_OPENERS_BY_LANGUAGE, anchored=True)
_ASKS_BACK = _compile(ASKS_BACK_BY_LANGUAGE, anchored=False)
_APOLOGIES = _compile(APOLOGIES_BY_LANGUAGE, anchored=False)


def _other_language_match(
    table: Mapping[str, regex.Pattern[str]], text: str
) -> tuple[str, str] | None:
    """The first (language, matched text) of a non-English list that finds something in `text`."""
    for lang, pattern in table.items():
        m = pattern.search(text)
        if m:
            return lang, m.group().strip()
    return None


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


# A question is a request in every language: Latin and Arabic question marks, full-width (CJK),
# the Spanish opening one, Greek, Armenian, Ethiopic and the small/vertical CJK forms.
QUESTION_MARKS = "?？¿؟;՞፧︖﹖"


def looks_like_instruction(text: str) -> bool:
    """A cheap test that the text asks for something: a question, or an imperative clause.

    Question words count only where a sentence starts ("Which city ..."): inside a sentence they
    are relative clauses ("..., where we need to find ...") and prove nothing. Imperative verbs
    count at any clause start ("To add depth, explain ...").
    """
    if any(mark in text for mark in QUESTION_MARKS):
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


_PUNCTUATION_AND_SYMBOLS = regex.compile(r"[\p{P}\p{S}]+")


def normalize(text: str) -> str:
    """The key for exact-duplicate checks: case, punctuation, symbols and spacing do not count.

    NFKC first, so full-width and composed forms match their plain ones; then every character of
    a Unicode punctuation (P*) or symbol (S*) category goes, which is what `string.punctuation`
    removed for ASCII, now for every script ("，", "«»", "¿" as well as "!").
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCTUATION_AND_SYMBOLS.sub("", text).split())


# Scripts written without spaces between words: a run of their letters is not one word. There is
# no dictionary here to segment them, so each of their characters is a token of its own.
_CJK = r"\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}"
_SOUTHEAST_ASIAN = r"\p{scx=Thai}\p{scx=Lao}\p{scx=Khmer}\p{scx=Myanmar}"
_WORD_CHAR = rf"[[\p{{L}}\p{{N}}\p{{M}}]--[{_CJK}{_SOUTHEAST_ASIAN}]]"
_TOKEN = regex.compile(
    rf"(?P<cjk>[[{_CJK}]&&[\p{{L}}\p{{N}}]]\p{{M}}*)"
    rf"|(?P<sea>[[{_SOUTHEAST_ASIAN}]&&[\p{{L}}\p{{N}}]]\p{{M}}*)"
    rf"|{_WORD_CHAR}+(?:['’]{_WORD_CHAR}+)*",
    regex.V1,
)
# Most text has no unspaced script, and much is plain ASCII: these patterns tokenise such text
# as `_TOKEN` does, several times faster.
_ASCII_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z0-9]+)*")
_SPACED_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+(?:['’][\p{L}\p{N}\p{M}]+)*")
_SPACELESS_CHAR = regex.compile(
    rf"[[{_CJK}{_SOUTHEAST_ASIAN}]&&[\p{{L}}\p{{N}}]]\p{{M}}*", regex.V1
)
_KANA = regex.compile(r"[[\p{scx=Hiragana}\p{scx=Katakana}]&&\p{L}]", regex.V1)
_LATIN = regex.compile(r"\p{Latin}")

# Characters per English word, to count unspaced scripts in words for the length rules. Measured
# on our own translations of 9 short English instructions (84 words): Chinese 123 characters
# (1.46 per word), Japanese 189 (2.25); Thai on 5 of them, 131 letters for 42 words (3.1).
# Lao, Khmer and Myanmar are assumed to be like Thai.
CHINESE_CHARS_PER_WORD = 1.5
JAPANESE_CHARS_PER_WORD = 2.25
SOUTHEAST_ASIAN_CHARS_PER_WORD = 3.0


def words(text: str) -> list[str]:
    """Unicode tokens: runs of letters, marks and digits of any script (an inner apostrophe
    joins "don't" or "l'automne"), and single characters of scripts written without spaces
    (Chinese, Japanese, Thai, Lao, Khmer, Myanmar)."""
    if text.isascii():
        return _ASCII_TOKEN.findall(text)
    if not _SPACELESS_CHAR.search(text):
        return _SPACED_TOKEN.findall(text)
    return [m.group() for m in _TOKEN.finditer(text)]


def word_count(text: str) -> float:
    """Length in English-word equivalents: a spaced word is one, a character of an unspaced
    script counts as the fraction of a word measured above, so caps and growth ratios mean
    about the same in every language. Japanese is told from Chinese by its kana."""
    if text.isascii() or not _SPACELESS_CHAR.search(text):
        return float(len(words(text)))
    spaced = cjk = southeast = 0
    for m in _TOKEN.finditer(text):
        if m.lastgroup == "cjk":
            cjk += 1
        elif m.lastgroup == "sea":
            southeast += 1
        else:
            spaced += 1
    per_cjk = JAPANESE_CHARS_PER_WORD if cjk and _KANA.search(text) else CHINESE_CHARS_PER_WORD
    return spaced + cjk / per_cjk + southeast / SOUTHEAST_ASIAN_CHARS_PER_WORD


def _join(tokens: Sequence[str]) -> str:
    """Tokens back to text for a message: no spaces between characters of unspaced scripts."""
    if all(_SPACELESS_CHAR.fullmatch(t) for t in tokens):
        return "".join(tokens)
    return " ".join(tokens)


# Language identification: py3langid (a naive Bayes model over byte n-grams; deterministic, about
# 0.2 ms per short text). Loaded on first use, once per process: it takes a second or two.
_LANGID_MAX_CHARS = 2000  # the language is clear long before; a 5 MB row must not cost seconds
_identifier: Any = None
_identifier_lock = threading.Lock()


def _language_identifier() -> Any:
    global _identifier
    with _identifier_lock:
        if _identifier is None:
            try:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier
            except ImportError as exc:
                raise EvolkitError(
                    "the language-identification package py3langid is missing: "
                    "pip install py3langid (a core dependency of evolkit)"
                ) from exc
            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


@lru_cache(maxsize=8192)
def _classify(text: str) -> tuple[str, float]:
    code, probability = _language_identifier().classify(text)
    return str(code), float(probability)


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639 code, probability) of the text's language; cached per text.

    The probabilities are the package's normalised ones: on our 70 texts of 5 to 30 words most
    were over 0.5 for the right language, and no non-English text got over 0.0014 for English;
    texts of a few words get under 0.25 for every language (docs/evol_instruct.md, "Languages").
    """
    return _classify(text[:_LANGID_MAX_CHARS])


def is_english(text: str, s: RuleSettings) -> bool:
    """Detected as English with at least `s.language_confidence`: rules that reject because
    they did *not* find English words (no imperative verb, no question word) need this."""
    if not _LATIN.search(text):
        return False
    code, probability = detect_language(text)
    return code == "en" and probability >= s.language_confidence


def maybe_english(text: str, s: RuleSettings) -> bool:
    """Not detected as another language: English, or too short or mixed to tell. Rules that
    reject because they *found* a specific English phrase ("Sure!", "sorry", "please provide")
    need only this, since the phrase itself is the evidence; a text without Latin letters or
    confidently in another language never gets them."""
    if not _LATIN.search(text):
        return False
    code, probability = detect_language(text)
    return code == "en" or probability < s.language_confidence


@dataclass(frozen=True)
class RuleSettings:
    max_instruction_words: int = 300
    near_duplicate_ratio: float = 0.92
    min_growth: float = 0.8  # in-depth rewrites shorter than this fraction of the parent fail
    sorry_max_words: int = 80
    # The language detector's probability at which a text counts as being in the language it
    # names; below it the language is unsure, and English-only rules that reject for a missing
    # English word are skipped (keeping a row rather than rejecting it wrongly).
    language_confidence: float = 0.5
    # `drifted`: an in-depth rewrite whose all-MiniLM-L6-v2 cosine similarity to its parent
    # is below this has left the parent's task. On three quickstart runs of the embedded model
    # the drifted rewrites scored <= 0.598 and the faithful ones >= 0.668 (docs/measures.md).
    min_parent_similarity: float = 0.6


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
    r"(i['’]m|i am|i['’]ve|i have|i can['’]t|i was|i love|i['’]ll|i will|i really)\b"
)


def rule_not_an_instruction(rec: Record, s: RuleSettings) -> str | None:
    text = rec.instruction.strip()
    english = is_english(text, s)
    if maybe_english(text, s):
        chatter = CHATTER.search(text)
        if chatter and not CHATTER.search(_parent_text(rec)):
            return f"drifts into first-person chatter: {text[chatter.start() :][:40]!r}"
        if ASKS_BACK.search(text):
            return "asks back instead of rewriting"
    if not english:
        found = _other_language_match(_ASKS_BACK, text)
        if found:
            return f"asks back instead of rewriting ({found[0]}: {found[1]!r})"
    if maybe_english(text, s) and NOT_AN_INSTRUCTION.match(text):
        return f"reads as a reply, not an instruction: {text[:40]!r}"
    if not english:
        found = _other_language_match(_REPLY_OPENERS, text)
        if found:
            return f"reads as a reply, not an instruction ({found[0]}): {text[:40]!r}"
        # No word list to tell a statement from an imperative in this language: keep the row.
        return None
    if not looks_like_instruction(text):
        return f"reads as a statement, not a request (no question, no imperative): {text[:40]!r}"
    return None


def rule_repetitive(rec: Record, s: RuleSettings) -> str | None:
    """Small models loop: about four words' worth said three times over is a loop, not a request.

    Four tokens for spaced scripts; for Chinese or Japanese, whose tokens are characters, as
    many characters as make four words (6 for Chinese), so a common two-character word does not
    count as a loop.
    """
    toks = [w.casefold() for w in words(rec.instruction)]
    length = word_count(rec.instruction)
    n = max(4, round(4 * len(toks) / length)) if length else 4
    grams = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
    if grams:
        gram, count = grams.most_common(1)[0]
        if count >= 3:
            return f"repeats {_join(gram)!r} {count} times"
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

    parent = _parent_text(rec)
    if rec.operation not in IN_DEPTH or not parent:
        return None
    n_new, n_old = word_count(rec.instruction), word_count(parent)
    if n_new < s.min_growth * n_old:
        return (
            f"an in-depth rewrite shrank the instruction ({_words(n_old)} -> {_words(n_new)} words)"
        )
    return None


def rule_too_long(rec: Record, s: RuleSettings) -> str | None:
    n = word_count(rec.instruction)
    if n > s.max_instruction_words:
        return f"{_words(n)} words, over the cap of {s.max_instruction_words}"
    return None


def _words(n: float) -> str:
    """A word count for a message: whole for spaced text, one decimal for counted characters."""
    return str(int(n)) if n == int(n) else f"{n:.1f}"


def rule_response_empty(rec: Record, s: RuleSettings) -> str | None:
    if not words(rec.output):
        return "the response is empty"
    return None


def rule_response_truncated(rec: Record, s: RuleSettings) -> str | None:
    if rec.meta.get("response", {}).get("finish_reason") == "length":
        return "the response hit the token limit (truncated)"
    return None


def rule_sorry(rec: Record, s: RuleSettings) -> str | None:
    """The original rule looks for "sorry"; other languages' apologies count too (short lists)."""
    n = word_count(rec.output)
    if n >= s.sorry_max_words:
        return None
    if maybe_english(rec.output, s) and "sorry" in rec.output.lower():
        return f"the response says sorry and has {_words(n)} words (< {s.sorry_max_words})"
    if not is_english(rec.output, s):
        found = _other_language_match(_APOLOGIES, rec.output)
        if found:
            return (
                f"the response says sorry ({found[0]}: {found[1]!r}) and has {_words(n)} words "
                f"(< {s.sorry_max_words})"
            )
    return None


def rule_punctuation_stopwords(rec: Record, s: RuleSettings) -> str | None:
    """Only punctuation (any script) rejects in every language; only stop words is English-only."""
    toks = [w.casefold() for w in words(rec.output)]
    if not toks or (maybe_english(rec.output, s) and all(t in STOP_WORDS for t in toks)):
        return "the response is only punctuation and stop words"
    return None


RuleFn = Callable[[Record, RuleSettings], "str | None"]

#: Rules that look at the evolved instruction, before a response exists.
INSTRUCTION_RULES: dict[str, RuleFn] = {
    "empty": rule_empty,
    "truncated": rule_truncated,
    # Before the similarity rules, whose cost grows with the square of the length: a runaway
    # multi-megabyte rewrite is rejected at once instead of after minutes of comparisons.
    "too_long": rule_too_long,
    "copies_meta_prompt": rule_copies_meta_prompt,
    "not_an_instruction": rule_not_an_instruction,
    "repetitive": rule_repetitive,
    "unchanged": rule_unchanged,
    "shrunk": rule_shrunk,
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


def retry_reason(rec: Record, rules: Sequence[str], settings: RuleSettings) -> str | None:
    """Why a fresh rewrite should be sampled again ("rule: reason"), or None when it passes."""
    found = first_failure(rec, rules, settings) if rules else None
    return f"{found[0]}: {found[1]}" if found else None


#: Rules that need state or a model; implemented by the eliminate stage itself.
SPECIAL_RULES = ("duplicate", "no_information_gain", "drifted")
ALL_RULES = (*INSTRUCTION_RULES, *SPECIAL_RULES, *RESPONSE_RULES)
