"""The elimination rules on Chinese, German and Spanish rows (and a glance at French and Japanese).

A good rewrite in these languages must pass every instruction rule and a real answer every
response rule; the failures a rule can see without English words (replies, questions back,
loops, copies of the parent, apologies, punctuation-only answers) must still be caught.
"""

from __future__ import annotations

import pytest

from evolkit.records import Record
from evolkit.stages.eliminate import DedupStage
from evolkit.stages.rules import (
    INSTRUCTION_RULES,
    RESPONSE_RULES,
    RuleSettings,
    normalize,
    rule_not_an_instruction,
    rule_too_long,
    words,
)

S = RuleSettings()

PARENT = {
    "zh": "写一首关于秋天的诗。",
    "de": "Schreibe ein Gedicht über den Herbst.",
    "es": "Escribe un poema sobre el otoño.",
}
# The same add_constraint rewrite in each language: three stanzas, a different tree in each.
GOOD = {
    "zh": "写一首关于秋天的诗，分成三节，每一节都要提到一种不同的树。",
    "de": "Schreibe ein Gedicht über den Herbst in drei Strophen und nenne in jeder Strophe "
    "einen anderen Baum.",
    "es": "Escribe un poema sobre el otoño en tres estrofas y menciona un árbol distinto en "
    "cada estrofa.",
}
ENGLISH_GOOD = (
    "Write a poem about autumn in three stanzas, and mention a different tree in each stanza."
)
ANSWER = {
    "zh": "秋风吹过山林，枫叶染红了小路。\n银杏在阳光下闪着金光，橡树落下果实。\n"
    "松树依旧青翠，静静等待冬天的第一场雪。",
    "de": "Der Herbst färbt die Ahornblätter rot, und die Eichen werfen ihre Eicheln ab.\n"
    "Im Nebel leuchten die Birken golden, während die Tannen grün bleiben.",
    "es": "El otoño tiñe de rojo los arces y los robles dejan caer sus bellotas.\n"
    "En la niebla, los abedules brillan dorados mientras los pinos siguen verdes.",
}
APOLOGY = {
    "zh": "抱歉，我无法完成这个请求。",
    "de": "Es tut mir leid, das kann ich nicht.",
    "es": "Lo siento, no puedo ayudarte con eso.",
}
ONLY_PUNCTUATION = {"zh": "……，。！？——", "de": "„…“ – !", "es": "¡¿…?! «»"}


def child(lang: str, text: str, op: str = "add_constraint", output: str = "") -> Record:
    return Record(
        id="c",
        instruction=text,
        operation=op,
        parent_id="p",
        round=1,
        output=output,
        meta={
            "parent": {"instruction": PARENT[lang], "input": ""},
            "evolution": {"finish_reason": "stop"},
            "response": {"finish_reason": "stop"},
        },
    )


def first_failure(rec: Record, table=INSTRUCTION_RULES) -> tuple[str, str] | None:
    for name, fn in table.items():
        reason = fn(rec, S)
        if reason:
            return name, reason
    return None


@pytest.mark.parametrize("lang", ["zh", "de", "es"])
def test_good_rewrite_passes_every_instruction_rule(lang: str) -> None:
    assert first_failure(child(lang, GOOD[lang])) is None


@pytest.mark.parametrize("lang", ["zh", "de", "es"])
def test_response_rules_keep_an_answer_and_catch_apologies_and_punctuation(lang: str) -> None:
    assert first_failure(child(lang, GOOD[lang], output=ANSWER[lang]), RESPONSE_RULES) is None
    sorry = first_failure(child(lang, GOOD[lang], output=APOLOGY[lang]), RESPONSE_RULES)
    assert sorry is not None and sorry[0] == "sorry"
    empty = first_failure(child(lang, GOOD[lang], output=ONLY_PUNCTUATION[lang]), RESPONSE_RULES)
    assert empty is not None and empty[0] == "response_empty"


@pytest.mark.parametrize(
    "text",
    [
        "Schreibe ein Gedicht über den Herbst.",
        "Escribe un poema sobre el otoño.",
        "写一首关于秋天的诗。",
        "Écris un poème sur l'automne.",
        "秋についての詩を書いてください。",
        "Erkläre in zwei Sätzen, warum der Himmel blau ist.",
        "Enumera tres usos del bicarbonato en la cocina.",
    ],
)
def test_imperatives_in_other_languages_are_instructions(text: str) -> None:
    rec = Record(id="c", instruction=text)
    assert rule_not_an_instruction(rec, S) is None


@pytest.mark.parametrize(
    ("lang", "text", "rule", "reason_start"),
    [
        ("zh", "好的，我来帮你写一首关于秋天的诗。", "not_an_instruction", "reads as a reply"),
        (
            "de",
            "Natürlich! Hier ist die überarbeitete Anweisung: Schreibe ein Gedicht über den "
            "Herbst.",
            "not_an_instruction",
            "reads as a reply",
        ),
        (
            "es",
            "Claro, aquí está la instrucción reescrita: escribe un poema sobre el otoño.",
            "not_an_instruction",
            "reads as a reply",
        ),
        ("zh", "请问您想让我改写什么指令？", "not_an_instruction", "asks back"),
        (
            "de",
            "Wie kann ich Ihnen helfen? Bitte geben Sie mir die Anweisung.",
            "not_an_instruction",
            "asks back",
        ),
        ("es", "¿En qué puedo ayudarte hoy?", "not_an_instruction", "asks back"),
        (
            "zh",
            "秋天的叶子是红色的，秋天的叶子是红色的，秋天的叶子是红色的，秋天的叶子是红色的。",
            "repetitive",
            "repeats",
        ),
        (
            "de",
            "Schreibe ein Gedicht über den Herbst, über den Herbst, über den Herbst, über den "
            "Herbst.",
            "repetitive",
            "repeats",
        ),
        ("zh", "写一首关于秋天的诗！", "unchanged", "identical"),
        ("es", "¡Escribe un poema sobre el otoño!", "unchanged", "identical"),
        ("zh", "写一首诗。", "shrunk", "an in-depth rewrite shrank"),
    ],
)
def test_failures_in_other_languages_are_caught(
    lang: str, text: str, rule: str, reason_start: str
) -> None:
    failure = first_failure(child(lang, text))
    assert failure is not None
    assert failure[0] == rule
    assert failure[1].startswith(reason_start), failure[1]


def test_look_alikes_of_replies_and_questions_back_are_kept() -> None:
    # "好的" opens replies ("好的，...") but also requests ("好的文章" = "a good article");
    # "有什么可以帮..." asks back only when it offers help to the reader.
    for text in (
        "好的文章应该具备哪些特点？请用三句话回答，并举一个关于秋天的例子。",
        "有什么可以帮助孩子入睡的方法？请列出三种，并说明原因。",
        "哪个指令可以在Linux中列出隐藏文件？请给出一个例子并解释每个参数。",
        "Welche Anweisung in Python beendet eine Schleife? Erkläre sie an einem Beispiel.",
        "¿Qué instrucción de SQL borra una tabla? Explica la diferencia con TRUNCATE.",
    ):
        assert first_failure(child("zh", text, op="breadth")) is None, text


@pytest.mark.parametrize(
    "text",
    [
        "Bien sûr, voici la nouvelle consigne : écris un poème sur l'automne.",
        "もちろんです。書き直した指示はこちらです。",
    ],
)
def test_french_and_japanese_replies_are_caught(text: str) -> None:
    reason = rule_not_an_instruction(Record(id="c", instruction=text), S)
    assert reason is not None and reason.startswith("reads as a reply"), reason


def test_unsure_mixed_text_is_kept_rather_than_rejected_by_english_rules() -> None:
    # Spanish with an English tail: the detector is unsure, so the English statement test
    # (which would find no English imperative) must not reject it.
    text = "Escribe un poema sobre el otoño en tres estrofas, in English please."
    assert first_failure(child("es", text)) is None


def test_words_are_unicode_tokens() -> None:
    assert words("Erkläre über naïve café, l'automne") == [
        "Erkläre",
        "über",
        "naïve",
        "café",
        "l'automne",
    ]
    assert words("写一首诗。") == ["写", "一", "首", "诗"]
    assert words("हिन्दी में लिखो") == ["हिन्दी", "में", "लिखो"]  # combining vowel signs stay inside


@pytest.mark.parametrize("lang", ["zh", "de", "es"])
def test_lengths_compare_across_languages(lang: str) -> None:
    from evolkit.stages.rules import word_count

    ratio = word_count(GOOD[lang]) / word_count(ENGLISH_GOOD)
    assert 0.7 < ratio < 1.4, ratio


def test_too_long_counts_chinese_characters_as_fractions_of_words() -> None:
    han = "".join(chr(0x4E00 + i) for i in range(600))  # 600 distinct characters, no loop
    assert rule_too_long(Record(id="c", instruction=han[:400]), S) is None  # about 267 words
    assert rule_too_long(Record(id="c", instruction=han), S) is not None  # about 400 words


def test_normalize_drops_punctuation_of_every_script_and_keeps_letters() -> None:
    assert normalize("¿Qué tal?") == normalize("qué tal") == "qué tal"
    assert normalize("写一首诗。") == normalize("写一首诗！") == "写一首诗"
    assert normalize("«Über den Herbst» – Gedicht") == "über den herbst gedicht"
    assert normalize("ＡＢＣ") == "abc"  # full-width letters match plain ones


def test_duplicates_ignore_non_ascii_punctuation() -> None:
    rows = [
        Record(id="a", instruction="写一首关于秋天的诗。"),
        Record(id="b", instruction="写一首关于秋天的诗！"),
    ]
    out = DedupStage().process(rows)
    assert [r.rejected for r in out] == [False, True]


def test_language_gates() -> None:
    from evolkit.stages.rules import is_english, maybe_english

    assert is_english(ENGLISH_GOOD, S)
    for text in (GOOD["de"], GOOD["es"], GOOD["zh"]):
        assert not is_english(text, S)
        assert not maybe_english(text, S)
    # Too short to tell: English-only rules that need English words to be present still
    # apply ("Sure." is a reply), the statement test does not.
    assert not is_english("Write a poem.", S)
    assert maybe_english("Write a poem.", S)


def test_detection_is_deterministic() -> None:
    from evolkit.stages.rules import _classify, detect_language

    first = [detect_language(t) for t in (*GOOD.values(), ENGLISH_GOOD)]
    _classify.cache_clear()
    again = [detect_language(t) for t in (*GOOD.values(), ENGLISH_GOOD)]
    assert first == again
    assert [code for code, _ in first] == ["zh", "de", "es", "en"]
