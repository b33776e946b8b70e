"""The comparison report: runs side by side, as one self-contained HTML page and summary.json."""

from evolkit.report.data import Outcomes, RowScores, RunMeasures, run_figures
from evolkit.report.html import write_report

__all__ = ["Outcomes", "RowScores", "RunMeasures", "run_figures", "write_report"]
