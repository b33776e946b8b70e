"""Where evolkit's messages go: logging for what happens during a run, `console` for results.

Everything a run says while it works (stage messages, warnings, progress lines) goes through
the standard `logging` module under the "evolkit" logger, so a library user can route it like
any other library's logs, and the CLI can send it to a terminal, a log file or both.

The CLI calls `setup_logging` once. On a terminal the lines go through rich (sharing `console`,
so they print above a live progress bar); anywhere else (nohup, CI, `2>log`) they are written
as plain lines: no colour codes and no wrapping at 80 columns, which would split one message
over several lines of a log. `attach_log_file` adds a run's `run.log` with the same lines.

User text is never parsed as rich markup here: a path such as `data[x].jsonl` or a hint such
as `pip install 'evolkit[hf]'` must come out exactly as written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

__all__ = [
    "BAR_SHOWN",
    "attach_log_file",
    "console",
    "debug",
    "detach_log_file",
    "error_line",
    "info",
    "log",
    "log_file",
    "say",
    "setup_logging",
    "stderr_is_terminal",
    "stderr_shows",
    "warn",
]

# For tables and the CLI's closing lines. soft_wrap: a long path in a closing line stays on one
# line (the terminal folds it; a log file keeps it whole) instead of being broken at 80 columns.
console = Console(stderr=True, soft_wrap=True)

log = logging.getLogger("evolkit")

# A record carrying this attribute set to True was already drawn as a live progress bar, so the
# stderr handlers skip it; a log file still gets it.
BAR_SHOWN = "evolkit_bar_shown"

_STDERR_TAG = "_evolkit_stderr"
_LEVEL_WORDS = {logging.DEBUG: "debug", logging.WARNING: "warning", logging.ERROR: "error"}
_LEVEL_WORDS[logging.CRITICAL] = "error"

# Until the CLI says otherwise, behave like an unconfigured library at INFO.
_stderr_level = logging.INFO


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (rich's judgement, so FORCE_COLOR etc. apply)."""
    return console.is_terminal


def stderr_shows(level: int) -> bool:
    """Whether a message at `level` would reach stderr under the current -v/-q setting."""
    return level >= _stderr_level and log.isEnabledFor(level)


def _level_prefix(record: logging.LogRecord) -> str:
    word = _LEVEL_WORDS.get(record.levelno)
    return f"{word}: " if word else ""


class _SkipBarLines(logging.Filter):
    """Drop per-batch lines that a progress bar already showed on the same stream."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, BAR_SHOWN, False)


class _PlainFormatter(logging.Formatter):
    """`message` for info, `warning: message` for the rest: grep-able, no decoration."""

    def format(self, record: logging.LogRecord) -> str:
        return _level_prefix(record) + super().format(record)


class _PlainStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that looks sys.stderr up at each write.

    Holding the stream from setup time would break when something swaps sys.stderr later
    (a test runner's capture, click's CliRunner) and then closes the swapped stream.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


class _TerminalHandler(RichHandler):
    """rich's handler without time, level column or path, and never parsing markup."""

    def __init__(self) -> None:
        super().__init__(
            console=console,
            show_time=False,
            show_level=False,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
        )

    def render_message(self, record: logging.LogRecord, message: str) -> Text:
        text = Text(message)  # never Text.from_markup, whatever the record carries
        if self.highlighter:
            text = self.highlighter(text)
        word = _LEVEL_WORDS.get(record.levelno)
        if word and record.levelno >= logging.WARNING:
            style = "bold red" if record.levelno >= logging.ERROR else "yellow"
            return Text.assemble((f"{word}: ", style), text)
        if word:
            return Text.assemble((f"{word}: ", "dim"), text)
        return text


def setup_logging(level: int = logging.INFO, *, terminal: bool | None = None) -> None:
    """Send evolkit's log lines to stderr at `level` (INFO by default, WARNING for -q, DEBUG
    for -v). Calling it again replaces the previous stderr handler.

    `terminal` picks the rich handler (True) or plain lines (False); by default it follows
    whether stderr is a terminal. The logger itself is kept at INFO or lower so that a run.log
    attached later still gets info lines under -q.
    """
    global _stderr_level
    _stderr_level = level
    for handler in list(log.handlers):
        if getattr(handler, _STDERR_TAG, False):
            log.removeHandler(handler)
    if terminal is None:
        terminal = stderr_is_terminal()
    new: logging.Handler
    if terminal:
        new = _TerminalHandler()
        new.setFormatter(logging.Formatter("%(message)s"))
    else:
        new = _PlainStderrHandler()
        new.setFormatter(_PlainFormatter("%(message)s"))
    setattr(new, _STDERR_TAG, True)
    new.setLevel(level)
    new.addFilter(_SkipBarLines())
    log.addHandler(new)
    log.setLevel(min(level, logging.INFO))


def attach_log_file(path: str | Path) -> logging.Handler:
    """Append evolkit's log lines (info and up, debug too under -v) to `path`, with timestamps.

    Returns the handler; pass it to `detach_log_file` when the run ends.
    """
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    )
    handler.setLevel(logging.DEBUG)
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    """Stop writing to a file attached by `attach_log_file`, and close it."""
    log.removeHandler(handler)
    handler.close()


@contextmanager
def log_file(path: str | Path) -> Iterator[logging.Handler]:
    """`attach_log_file` for the duration of a run; how the run ended goes into the file too.

    A failure is written to the file only (the CLI prints its own line on stderr): an
    EvolkitError as its message, Ctrl-C as "interrupted", anything else with its traceback,
    so run.log explains a crash even when the user did not pass -v.
    """
    from evolkit.errors import EvolkitError

    handler = attach_log_file(path)
    try:
        yield handler
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            msg, exc_info = "interrupted", None
        elif isinstance(exc, EvolkitError):
            msg, exc_info = str(exc), None
        elif isinstance(exc, Exception):
            msg, exc_info = f"unexpected {type(exc).__name__}: {exc}", sys.exc_info()
        else:  # SystemExit, GeneratorExit: not a failure of the run
            raise
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, (), exc_info)
        handler.handle(record)
        raise
    finally:
        detach_log_file(handler)


def info(msg: str) -> None:
    """A progress message (hidden by -q); printed exactly as written."""
    log.info("%s", msg)


def warn(msg: str) -> None:
    """Something the user should know that does not stop the run; printed as written."""
    log.warning("%s", msg)


def debug(msg: str) -> None:
    """Detail shown only with -v (and written to run.log under -v)."""
    log.debug("%s", msg)


def say(text: str, *, label: str | None = None, style: str | None = None) -> None:
    """One closing line of a command (where the output went, what was kept), always shown.

    `label` is printed first in `style` on a terminal (`say(path, label="kept rows:",
    style="green")`); `text` is printed verbatim: never parsed as markup, never highlighted.
    """
    line = Text()
    if label:
        line.append(label, style=style)
        line.append(" ")
        line.append(text)
    else:
        line.append(text, style=style)
    console.print(line, highlight=False, soft_wrap=True)


def error_line(msg: str) -> None:
    """The CLI's one line for a failure: `error: <msg>`, the message exactly as written."""
    console.print(Text.assemble(("error:", "bold red"), " ", msg), highlight=False, soft_wrap=True)
