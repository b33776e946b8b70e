"""The report's plots, drawn with matplotlib's object API into SVG text.

No pyplot: it would pick a GUI backend and keep global figures; a bare Figure drawn to SVG
needs neither. Every plot compares the runs in one picture with the same colour per run, and a
plot whose measure no run has is not drawn at all (the page says "not measured" instead).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from evolkit.measures.difficulty import LEVELS
from evolkit.measures.diversity import MIN_NN_SCORE, NEAR_DUPLICATE
from evolkit.report.data import RunMeasures

# Colour-blind-safe run colours (Okabe-Ito), then matplotlib's defaults for longer lists.
RUN_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"]
LEVEL_COLOURS = ["#1a9850", "#91cf60", "#fee08b", "#fc8d59", "#d73027"]
WIDTH = 10.0
HEIGHT = 3.8


@dataclass
class Plot:
    """One plot of the page: its SVG, or None with a note saying what was not measured."""

    key: str
    title: str
    how_to_read: str
    svg: str | None
    note: str = ""


def colour(i: int) -> str:
    if i < len(RUN_COLOURS):
        return RUN_COLOURS[i]
    import matplotlib

    return str(matplotlib.colors.to_hex(matplotlib.colormaps["tab20"](i % 20)))


def _svg(fig: Any, salt: str) -> str:
    """The figure as an inline <svg> element (no XML prolog, ids unique to this plot)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    start = text.find("<svg")
    svg = text[start:]
    # Element ids must be unique in the page: matplotlib's are unique within one file only.
    return re.sub(r'(id="|url\(#|href="#)([^"\)]+)', rf"\1{salt}-\2", svg)


def _figure(ncols: int = 1, height: float = HEIGHT, sharey: bool = False) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.3)
    return fig, axes


def _missing(runs: Sequence[RunMeasures], has: Callable[[RunMeasures], bool]) -> str:
    names = [r.name for r in runs if not has(r)]
    return f"Not measured for: {', '.join(names)}." if names else ""


def _not_measured(key: str, title: str, how: str, what: str) -> Plot:
    return Plot(key, title, how, None, f"Not measured: {what}.")


def _labelled(figs: dict[str, Any]) -> bool:
    d = figs["overall"]["difficulty"]
    return bool(d and d["labelled"])


def difficulty_labels(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> Plot:
    key, title = "difficulty-labels", "Difficulty labels per round"
    how = (
        "Each bar is one round's rows, split by the judge's label; more red means harder "
        "instructions. Round 0 is the seeds (when they were judged). Shares are of parsed labels."
    )

    def per_round_labels(f: dict[str, Any]) -> dict[int, dict[str, Any]]:
        return {
            int(r): g["difficulty"]
            for r, g in f["per_round"].items()
            if g["difficulty"] and g["difficulty"]["labelled"]
        }

    shown = [(i, r, f) for i, (r, f) in enumerate(zip(runs, figs, strict=True)) if _labelled(f)]
    if not shown:
        return _not_measured(key, title, how, "no run has difficulty labels")
    fig, axes = _figure(len(shown), sharey=True)
    for ax, (_, run, f) in zip(axes, shown, strict=True):
        table = per_round_labels(f)
        rounds = sorted(table)
        bottom = [0.0] * len(rounds)
        for level, c in zip(LEVELS, LEVEL_COLOURS, strict=True):
            vals = [100 * (table[r]["label_shares"][level] or 0.0) for r in rounds]
            ax.bar([str(r) for r in rounds], vals, bottom=bottom, color=c, label=level, width=0.6)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        for x, r in enumerate(rounds):
            d = table[r]
            extra = f"\n{d['label_unparsed']} unparsed" if d["label_unparsed"] else ""
            ax.text(x, 101, f"n={d['labelled']}{extra}", ha="center", va="bottom", fontsize=8)
        ax.set_title(run.name)
        ax.set_xlabel("round (0 = seeds)" if 0 in rounds else "round")
        ax.set_ylim(0, 118)
    axes[0].set_ylabel("share of labelled rows (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.0, 0.5))
    note = _missing(runs, lambda r: _labelled(figs[runs.index(r)]))
    return Plot(key, title, how, _svg(fig, key), note)


def difficulty_scores(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> Plot:
    key, title = "difficulty-scores", "Difficulty score and hard share per round"
    how = (
        "Left: the judge's mean 0-100 difficulty score per round; right: the share labelled "
        "hard or very hard. Higher lines mean the evolver made harder instructions."
    )

    def series(f: dict[str, Any], field: str) -> tuple[list[int], list[float]]:
        pts = [
            (int(r), g["difficulty"][field])
            for r, g in f["per_round"].items()
            if g["difficulty"] and g["difficulty"][field] is not None
        ]
        pts.sort()
        return [p[0] for p in pts], [p[1] for p in pts]

    if not any(series(f, "mean_score")[0] or series(f, "hard_share")[0] for f in figs):
        return _not_measured(key, title, how, "no run has difficulty scores or labels")
    fig, (left, right) = _figure(2)
    all_rounds: set[int] = set()
    for i, (run, f) in enumerate(zip(runs, figs, strict=True)):
        xs, ys = series(f, "mean_score")
        if xs:
            left.plot(xs, ys, marker="o", color=colour(i), label=run.name)
        hx, hy = series(f, "hard_share")
        if hx:
            right.plot(hx, [100 * y for y in hy], marker="o", color=colour(i), label=run.name)
        all_rounds.update(xs + hx)
    for ax in (left, right):
        ax.set_xticks(sorted(all_rounds))
        ax.set_xlabel("round (0 = seeds)" if 0 in all_rounds else "round")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    left.set_ylabel("mean difficulty score (0-100)")
    right.set_ylabel("hard + very hard (% of labelled rows)")
    for ax in (left, right):  # a little headroom, so a point at 100 is not cut in half
        ax.set_ylim(0, 104)
        ax.set_yticks(range(0, 101, 20))
    note = _missing(runs, lambda r: bool(series(figs[runs.index(r)], "mean_score")[0])).replace(
        "Not measured", "No difficulty score"
    )
    return Plot(key, title, how, _svg(fig, key), note)


def _space(f: dict[str, Any], which: str) -> dict[str, Any] | None:
    s = f["overall"]["output_space"]
    return s[which] if s and s[which]["n"] else None


def top1_density(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> Plot:
    key, title = "top1-density", "Top-1 token probability of the evolver (greedy re-generation)"
    how = (
        "How sure the evolver was of each token it wrote: mass piled against 1 means a peaked "
        "distribution (confident, repetitive rewrites); a spread curve means a flatter one. Left: "
        "the first 5 tokens of each evolution (what the study plotted); right: all tokens. "
        "Lines are density estimates, shaded steps the histograms."
    )
    if not any(_space(f, "first5") for f in figs):
        return _not_measured(key, title, how, "no run has top-1 probabilities")
    fig, axes = _figure(2)
    for ax, which, label in zip(
        axes, ("first5", "all"), ("first 5 tokens", "all tokens"), strict=True
    ):
        for i, (run, f) in enumerate(zip(runs, figs, strict=True)):
            d = _space(f, which)
            if not d:
                continue
            edges = d["hist_edges"]
            width = edges[1] - edges[0]
            dens = [c / (d["n"] * width) for c in d["hist_counts"]]
            ax.stairs(dens, edges, color=colour(i), alpha=0.25, fill=True)
            name = f"{run.name} (mean {d['mean']:.2f}, >0.9: {100 * d['share_above_0_9']:.0f}%)"
            if d["density_x"]:
                ax.plot(d["density_x"], d["density_y"], color=colour(i), label=name)
            else:
                ax.stairs(dens, edges, color=colour(i), label=name)
        ax.set_xlim(0, 1)
        ax.set_title(label)
        ax.set_xlabel("top-1 probability")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("density")
    note = _missing(runs, lambda r: bool(_space(figs[runs.index(r)], "first5")))
    return Plot(key, title, how, _svg(fig, key), note)


def _values(run: RunMeasures, name: str) -> list[float]:
    return [r.scores[name] for r in run.evolved if name in r.scores]


def _share_hist(ax: Any, values: list[float], edges: Any, c: str, label: str) -> None:
    import numpy as np

    counts, _ = np.histogram(values, bins=edges)
    shares = 100 * counts / max(1, len(values))
    ax.stairs(shares, edges, color=c, alpha=0.2, fill=True)
    ax.stairs(shares, edges, color=c, label=label, linewidth=1.5)


def nn_distance(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> Plot:
    import numpy as np

    key, title = "nn-distance", "Distance of each instruction to its nearest neighbour"
    how = (
        "Cosine distance from each evolved instruction to the closest other instruction of "
        "its round. Mass further right means a more diverse set; bars left of the dashed line "
        f"(< {NEAR_DUPLICATE}) are near-duplicates."
    )
    data = [_values(r, MIN_NN_SCORE) for r in runs]
    if not any(data):
        return _not_measured(key, title, how, "no run has nearest-neighbour distances")
    top = max(max(v) for v in data if v)
    edges = np.linspace(0.0, max(top * 1.05, 2 * NEAR_DUPLICATE), 31)
    fig, (ax,) = _figure(1)
    for i, (run, values) in enumerate(zip(runs, data, strict=True)):
        if values:
            near = sum(1 for v in values if v < NEAR_DUPLICATE)
            label = f"{run.name} (mean {np.mean(values):.3f}, {near} near-dup.)"
            _share_hist(ax, values, edges, colour(i), label)
    ax.axvline(NEAR_DUPLICATE, color="#444", linestyle="--", linewidth=1, label="near-duplicate")
    ax.set_xlabel("cosine distance to nearest other instruction")
    ax.set_ylabel("share of rows (%)")
    ax.legend()
    note = _missing(runs, lambda r: bool(data[runs.index(r)]))
    return Plot(key, title, how, _svg(fig, key), note)


def ifd_hist(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> Plot:
    import numpy as np

    key, title = "ifd", "IC-IFD and IFD of the evolved rows"
    how = (
        "IFD = L(A|Q) / L(A): below 1 the instruction helps predict the response. IC-IFD "
        "divides by L(Q) too, favouring rows whose instruction is itself hard to predict. "
        "Selection keeps the top of these scores."
    )
    names = (("ic_ifd", "IC-IFD"), ("ifd", "IFD"))
    data = {n: [_values(r, n) for r in runs] for n, _ in names}
    if not any(any(v) for v in data.values()):
        return _not_measured(key, title, how, "no run was scored for IFD / IC-IFD")
    fig, axes = _figure(2)
    for ax, (name, label) in zip(axes, names, strict=True):
        vals = data[name]
        if not any(vals):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label)
            continue
        pooled = [x for v in vals for x in v]
        edges = np.linspace(min(pooled), max(pooled) + 1e-9, 26)
        for i, (run, v) in enumerate(zip(runs, vals, strict=True)):
            if v:
                _share_hist(ax, v, edges, colour(i), f"{run.name} (mean {np.mean(v):.3f})")
        if name == "ifd" and min(pooled) < 1.0 < max(pooled):
            ax.axvline(1.0, color="#444", linestyle="--", linewidth=1, label="IFD = 1")
        ax.set_title(label)
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("share of rows (%)")
    note = _missing(runs, lambda r: bool(data["ifd"][runs.index(r)]))
    return Plot(key, title, how, _svg(fig, key), note)


def kept_by_operation(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> Plot:
    key, title = "kept-by-operation", "Kept rate per operation"
    how = (
        "Of the rows each operation produced (all rounds), the share that passed every "
        "elimination rule; the numbers above the bars are kept / produced."
    )
    ops = sorted({op for r in runs for op in r.by_operation})
    if not ops:
        return _not_measured(key, title, how, "no run has kept / eliminated counts")
    shown = [(i, r) for i, r in enumerate(runs) if r.by_operation]
    fig, (ax,) = _figure(1)
    width = 0.8 / len(shown)
    for k, (i, run) in enumerate(shown):
        xs = [j + (k - (len(shown) - 1) / 2) * width for j in range(len(ops))]
        outs = [run.by_operation.get(op) for op in ops]
        rates = [100 * (o.kept_rate or 0.0) if o else 0.0 for o in outs]
        ax.bar(xs, rates, width=width, color=colour(i), label=run.name)
        for x, o, y in zip(xs, outs, rates, strict=True):
            if o:
                ax.text(x, y + 1, f"{o.kept}/{o.kept + o.rejected}", ha="center", fontsize=7)
    ax.set_xticks(range(len(ops)), [op.replace("_", " ") for op in ops])
    ax.set_ylabel("kept (%)")
    ax.set_ylim(0, 112)
    ax.legend()
    note = _missing(runs, lambda r: bool(r.by_operation))
    return Plot(key, title, how, _svg(fig, key), note)


def eliminations(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> Plot:
    key, title = "eliminations", "Elimination reasons per operation"
    how = (
        "Rows each operation produced that a rule eliminated, by the first rule that failed "
        "(one colour per rule, same colours in every panel)."
    )
    shown = [r for r in runs if any(o.rejected for o in r.by_operation.values())]
    if not shown:
        return _not_measured(key, title, how, "no run has eliminated rows")
    rules = sorted(
        {rule for r in shown for o in r.by_operation.values() for rule in o.rejected_by_rule}
    )
    ops = sorted({op for r in shown for op in r.by_operation})
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    fig, axes = _figure(len(shown), sharey=True)
    for ax, run in zip(axes, shown, strict=True):
        bottom = [0] * len(ops)
        for k, rule in enumerate(rules):
            vals = [
                run.by_operation[op].rejected_by_rule.get(rule, 0) if op in run.by_operation else 0
                for op in ops
            ]
            ax.bar(
                [op.replace("_", "\n") for op in ops],
                vals,
                bottom=bottom,
                color=cmap(k % 20),
                label=rule.replace("_", " "),
            )
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title(run.name)
        ax.tick_params(axis="x", labelsize=7)
    axes[0].set_ylabel("eliminated rows")
    axes[0].yaxis.set_major_locator(_integer_ticks())
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    note = _missing(runs, lambda r: r in shown).replace("Not measured", "No eliminated rows")
    return Plot(key, title, how, _svg(fig, key), note)


def trajectory_methods(runs: Sequence[RunMeasures], figs: Sequence[dict[str, Any]]) -> Plot:
    key, title = "trajectory-methods", "Evolving methods (Auto Evol-Instruct)"
    how = (
        "How many distinct evolving methods each run's optimisation produced, as the run "
        "reported them (one group of bars per figure)."
    )
    numeric = {
        r.name: {k: float(v) for k, v in (r.trajectory_methods or {}).items() if _is_number(v)}
        for r in runs
    }
    keys = sorted({k for d in numeric.values() for k in d})
    if not keys:
        return _not_measured(key, title, how, "no run reported method counts")
    fig, (ax,) = _figure(1)
    shown = [(i, r) for i, r in enumerate(runs) if numeric[r.name]]
    width = 0.8 / len(shown)
    for k, (i, run) in enumerate(shown):
        xs = [j + (k - (len(shown) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(
            xs,
            [numeric[run.name].get(x, 0.0) for x in keys],
            width=width,
            color=colour(i),
            label=run.name,
        )
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(_integer_ticks())
    ax.legend()
    note = _missing(runs, lambda r: bool(numeric[r.name]))
    return Plot(key, title, how, _svg(fig, key), note)


def _integer_ticks() -> Any:
    """Counts have no half rows: tick at whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


SECTIONS: list[
    tuple[str, list[Callable[[Sequence[RunMeasures], Sequence[dict[str, Any]]], Plot]]]
] = [
    ("Difficulty", [difficulty_labels, difficulty_scores]),
    ("Output space", [top1_density]),
    ("Diversity", [nn_distance]),
    ("IFD and IC-IFD", [ifd_hist]),
    ("Elimination", [kept_by_operation, eliminations]),
]
