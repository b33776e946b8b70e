"""The comparison report: one self-contained HTML page plus summary.json with its numbers.

Everything the page shows is inside the file (SVG plots, CSS, no script), so it opens offline,
can be mailed, and a browser makes no request while showing it.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evolkit.errors import EvolkitError
from evolkit.report import plots
from evolkit.report.data import HEADLINE_LABELS, PERCENT, RunMeasures, run_figures
from evolkit.report.train_eval import TrainEvalTable

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"

# The study's reference figures a reader compares against (SPEC sections 5 and 9).
STUDY_NOTE = (
    "For reference, the study (SPEC sections 5, 9) found on Alpaca: mean difficulty over rounds "
    "1-3 of 66.35 / 77.62 / 82.44 for the 8B-evolved data against 52.89 / 68.16 / 75.73 for the "
    "70B-evolved (seeds 27.63); hard + very hard 31.4% / 72.3% / 90.3% against 9.9% / 34.6% / "
    "60.0%; the 70B evolver's top-1 probabilities piled near 1 while the 8B's were spread."
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .3rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
thead th { background: #f3f3f3; }
.swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px;
          margin-right: .4rem; vertical-align: -1px; }
figure.plot { margin: .4rem 0 1rem; }
figure.plot svg { width: 100%; height: auto; display: block; }
.how { color: #555; font-size: .9rem; margin: .1rem 0 .4rem; }
.note, .not-measured { color: #8a4b00; background: #fff6e5; border-left: 3px solid #e69f00;
       padding: .3rem .6rem; font-size: .9rem; }
.muted { color: #666; font-size: .85rem; }
"""


def write_report(
    runs: Sequence[RunMeasures],
    out_dir: str | Path,
    *,
    train_eval: TrainEvalTable | None = None,
) -> Path:
    """Write out_dir/report.html and out_dir/summary.json comparing `runs`; return the page.

    Only these two files are written (replaced when present), so pointing `out_dir` at a
    folder holding other things never touches them. `train_eval` (from `evolkit train-eval`)
    adds a section with each trained model's IFEval figures, and `train_eval` in summary.json.
    """
    if not runs:
        raise EvolkitError("a report needs at least one run")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise EvolkitError(f"run names must differ to tell the runs apart: {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = [run_figures(r) for r in runs]
    sections = [(title, [make(runs, figs) for make in makers]) for title, makers in plots.SECTIONS]
    if any(r.trajectory_methods for r in runs):
        sections.append(("Trajectory methods", [plots.trajectory_methods(runs, figs)]))
    page = _page(runs, figs, sections, train_eval)
    summary = {
        "runs": figs,
        "headline_labels": HEADLINE_LABELS,
        "plots": {p.key: p.svg is not None for _, ps in sections for p in ps},
    }
    if train_eval is not None:
        summary["train_eval"] = train_eval.to_dict()
    _atomic_write(out / SUMMARY_NAME, json.dumps(_clean(summary), indent=2, ensure_ascii=False))
    path = out / REPORT_NAME
    _atomic_write(path, page)
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _clean(x: Any) -> Any:
    """NaN is not JSON: a value that could not be computed is written as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return '<span class="muted">not measured</span>'
    if key in PERCENT:
        return f"{100 * float(v):.1f}%"
    if isinstance(v, int):
        return str(v)
    return f"{float(v):.3f}"


def _e(x: Any) -> str:
    return html.escape(str(x))


def _runs_table(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> str:
    rows = []
    for i, (run, f) in enumerate(zip(runs, figs, strict=True)):
        c = f["config"]
        cells = [c.get("evolver"), c.get("temperature"), c.get("rounds"), c.get("seeds")]
        tds = "".join(f"<td>{'' if v is None else _e(v)}</td>" for v in cells)
        swatch = f'<span class="swatch" style="background:{plots.colour(i)}"></span>'
        rows.append(f"<tr><td>{swatch}{_e(run.name)}</td>{tds}<td>{_e(run.source)}</td></tr>")
    head = "".join(
        f"<th>{h}</th>" for h in ("run", "evolver", "temperature", "rounds", "seeds", "folder")
    )
    head = f"<tr>{head}</tr>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _headline_table(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_e(r.name)}</th>" for r in runs)
    body = []
    for key, label in HEADLINE_LABELS.items():
        tds = "".join(f"<td>{_fmt(key, f['headline'][key])}</td>" for f in figs)
        body.append(f"<tr><td>{_e(label)}</td>{tds}</tr>")
    return (
        f'<table id="summary-table"><thead><tr><th>figure</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _round_table(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> str:
    head = (
        "<tr><th>run</th><th>round</th><th>rows</th><th>kept rate</th><th>mean difficulty</th>"
        "<th>hard + very hard</th><th>mean top-1 (first 5)</th><th>mean min-NN</th>"
        "<th>near-dup.</th><th>distinct-2</th></tr>"
    )
    body = []
    for run, f in zip(runs, figs, strict=True):
        for r, g in f["per_round"].items():
            d, s, v = g["difficulty"], g["output_space"], g["diversity"]
            out = f["outcomes_by_round"].get(r)
            cells = [
                ("rows", g["rows"]),
                ("kept_rate", out["kept_rate"] if out else None),
                ("x", d["mean_score"] if d else None),
                ("hard_share", d["hard_share"] if d else None),
                ("x", s["first5"]["mean"] if s else None),
                ("x", v["mean_min_distance"] if v else None),
                ("rows", v["near_duplicates"] if v else None),
                ("x", g["distinct"]["2"]),
            ]
            tds = "".join(f"<td>{_fmt(k, x)}</td>" for k, x in cells)
            if r == "0":  # seeds are inputs: no elimination ran on them
                tds = tds.replace(_fmt("kept_rate", None), "&ndash;", 1)
            label = "seeds" if r == "0" else r
            body.append(f"<tr><td>{_e(run.name)}</td><td>{label}</td>{tds}</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _plot_html(p: plots.Plot) -> str:
    parts = [f"<h3>{_e(p.title)}</h3>", f'<p class="how">How to read this: {_e(p.how_to_read)}</p>']
    if p.svg is not None:
        parts.append(f'<figure class="plot" data-plot="{_e(p.key)}">{p.svg}</figure>')
    if p.note:
        cls = "not-measured" if p.svg is None else "note"
        parts.append(f'<p class="{cls}" data-plot="{_e(p.key)}">{_e(p.note)}</p>')
    return "\n".join(parts)


def _page(
    runs: Sequence[RunMeasures],
    figs: Sequence[dict[str, Any]],
    sections: list[tuple[str, list[plots.Plot]]],
    train_eval: TrainEvalTable | None = None,
) -> str:
    from evolkit import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = " vs ".join(r.name for r in runs)
    body = [
        f"<h1>evolkit comparison: {_e(names)}</h1>",
        f'<p class="muted">Written by evolkit {_e(__version__)} on {stamp}. The same numbers '
        "are in summary.json beside this page.</p>",
        "<h2>Runs</h2>",
        _runs_table(runs, figs),
    ]
    if train_eval is not None:
        body += ["<h2>Trained models on IFEval</h2>", train_eval.html()]
    body += [
        "<h2>Summary</h2>",
        '<p class="how">The figures a reader quotes, over each run\'s kept evolved rows (seeds '
        "excluded). Difficulty shares are of parsed labels; distances are cosine distances "
        "within a round.</p>",
        _headline_table(runs, figs),
        f'<p class="muted">{_e(STUDY_NOTE)}</p>',
        "<h3>Per round</h3>",
        _round_table(runs, figs),
    ]
    for title, ps in sections:
        body.append(f"<h2>{_e(title)}</h2>")
        body.extend(_plot_html(p) for p in ps)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # An empty icon: without it a browser asks the server for /favicon.ico.
        '<link rel="icon" href="data:,">\n'
        f"<title>evolkit comparison: {_e(names)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
