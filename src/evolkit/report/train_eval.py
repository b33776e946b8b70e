"""The train-eval section of the comparison report: each trained model's IFEval figures with
bootstrap intervals, and its difference to the untrained base and to the first trained model.

`write_report(..., train_eval=TrainEvalTable(...))` adds it; without it the report is as before.
The table is built from plain dicts (see `evolkit.scenarios.train_eval`), so it can be filled
from summary.json or by hand in a test.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FIGURE_LABELS = {
    "prompt_level_strict_acc": "prompt-level strict",
    "inst_level_strict_acc": "instruction-level strict",
    "prompt_level_loose_acc": "prompt-level loose",
    "inst_level_loose_acc": "instruction-level loose",
}

HOW_TO_READ = (
    "Each model answered the same IFEval prompts greedily. Brackets are {conf} bootstrap "
    "intervals over prompts ({resamples} resamples). A difference is paired (both models "
    "resampled on the same prompts); when its interval contains 0, the data do not show that "
    "the two models differ, however the point values compare."
)


@dataclass
class TrainEvalTable:
    """models: one dict per model, the base first (see `evolkit.scenarios.train_eval`)."""

    models: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    confidence: float = 0.95
    resamples: int = 1000
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "settings": self.settings,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "notes": self.notes,
        }

    def html(self) -> str:
        conf = f"{round(100 * self.confidence)}%"
        parts = [
            f'<p class="how">{_e(HOW_TO_READ.format(conf=conf, resamples=self.resamples))}</p>',
            _figures_table(self.models),
        ]
        for ref_key, title in (("vs_base", "Difference to the untrained base"),):
            parts.append(f"<h3>{_e(title)}</h3>")
            parts.append(_difference_table(self.models, ref_key))
        if any(m.get("vs_first") for m in self.models):
            first = next(m["name"] for m in self.models if m.get("role") == "trained")
            parts.append(f"<h3>Difference to {_e(first)}</h3>")
            parts.append(_difference_table(self.models, "vs_first"))
        parts.append(_training_table(self.models))
        parts.extend(f'<p class="note">{_e(n)}</p>' for n in self.notes)
        return "\n".join(parts)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _or_dash(x: Any) -> str:
    return "&ndash;" if x is None or x == "" else _e(x)


def _ci(iv: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not iv:
        return '<span class="muted">not measured</span>'
    sign = "+" if signed else ""
    return (
        f"{iv['value']:{sign}.3f} "
        f'<span class="muted">[{iv["low"]:{sign}.3f}, {iv["high"]:{sign}.3f}]</span>'
    )


def verdict(iv: Mapping[str, Any] | None) -> str:
    """'higher' / 'lower' when the interval of a difference excludes 0, else 'no clear
    difference'."""
    if not iv:
        return ""
    if iv["low"] > 0:
        return "higher"
    if iv["high"] < 0:
        return "lower"
    return "no clear difference"


def _figures_table(models: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for label in FIGURE_LABELS.values())
    body = []
    for m in models:
        iv = m.get("intervals") or {}
        tds = "".join(f"<td>{_ci(iv.get(k))}</td>" for k in FIGURE_LABELS)
        body.append(f"<tr><td>{_e(m['name'])}</td><td>{m.get('prompts', '')}</td>{tds}</tr>")
    return (
        f'<table id="train-eval-table"><thead><tr><th>model</th><th>prompts</th>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table>"
    )


def _difference_table(models: list[dict[str, Any]], key: str) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for label in FIGURE_LABELS.values())
    body = []
    for m in models:
        diff = m.get(key)
        if not diff:
            continue
        tds = "".join(
            f"<td>{_ci(diff.get(k), signed=True)}<br>"
            f'<span class="muted">{_e(verdict(diff.get(k)))}</span></td>'
            for k in FIGURE_LABELS
        )
        body.append(f"<tr><td>{_e(m['name'])}</td>{tds}</tr>")
    return (
        f'<table class="train-eval-diff" data-against="{_e(key)}"><thead><tr><th>model</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _training_table(models: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th>model</th><th>trained on</th><th>selection</th><th>rows</th><th>steps</th>"
        "<th>loss first &rarr; last</th><th>train s</th><th>IFEval answers s</th></tr>"
    )
    body = []
    for m in models:
        t = m.get("training") or {}
        loss = (
            f"{t['first_loss']:.3f} &rarr; {t['last_loss']:.3f}"
            if t.get("first_loss") is not None and t.get("last_loss") is not None
            else "&ndash;"
        )
        cells = [
            _or_dash(m.get("source")),
            _or_dash(m.get("selection")),
            _or_dash(t.get("rows")),
            _or_dash(t.get("steps")),
            loss,
            _or_dash(t.get("seconds")),
            _or_dash(m.get("eval_seconds")),
        ]
        tds = "".join(f"<td>{c}</td>" for c in cells)
        body.append(f"<tr><td>{_e(m['name'])}</td>{tds}</tr>")
    return f"<h3>Training</h3><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
