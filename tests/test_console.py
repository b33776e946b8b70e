"""Messages, progress and Ctrl-C as a user sees them: on a terminal, in a log file, in run.log.

Most tests run the real `evolkit.cli.main` in a subprocess, with a hidden fake command added
to the app by a small script: it walks StepProgress through a few batches without a model, so
stderr can be a file, a pipe or a pseudo-terminal exactly as under nohup, CI or a shell.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import evolkit
from evolkit import console as console_mod

SRC = Path(evolkit.__file__).resolve().parents[1]

FAKE_CLI = r"""
import sys
import time
from contextlib import nullcontext

import typer

from evolkit.cli import main
from evolkit.cli.common import app
from evolkit.console import debug, info, log_file, say, warn
from evolkit.errors import EvolkitError
from evolkit.progress import StepProgress, stage


@app.command("fake-run", hidden=True)
def fake_run(
    rows: int = 6,
    batch: int = 2,
    resumed: int = 0,
    log: str = "",
    then: str = "finish",
) -> None:
    with log_file(log) if log else nullcontext():
        stage("loading the model")
        retries = {}
        with StepProgress("round-1", total=rows, done=resumed) as bar:
            for start in range(resumed, rows, batch):
                retries["429"] = retries.get("429", 0) + 1
                bar.advance(min(batch, rows - start), retries=retries)
                if then == "sleep":
                    info("ready for ctrl-c")
                    time.sleep(120)
        debug("a debug line")
        info("install the extra with pip install 'evolkit[hf]' to read data[x].jsonl")
        warn("a warning about [bold]not bold[/bold]")
        if then == "error":
            raise EvolkitError("cannot read /tmp/run[x]/in.jsonl: try pip install 'evolkit[hf]'")
        if then == "crash":
            raise ValueError("boom [x]")
        say("/a/very/long/folder/name" * 8 + "/evolved.jsonl", label="kept rows:", style="green")


main()
"""

INTERRUPTED = "interrupted: run the same command again to resume"
LINE = re.compile(
    r"^round-1: (\d+)/6 rows \(\d+%\), \d+(?:\.\d\d)? rows/s, (ETA \S+|done in \S+), "
    r"retries (\d+) \(429: \3\)$"
)


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # These make rich treat any stream as a terminal (or never); the tests pick the stream.
        if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS")
    }
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["TERM"] = "xterm-256color"
    return env


@pytest.fixture
def fake_cli(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI)
    return [sys.executable, str(script)]


def _run_to_file(cmd: list[str], tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run with stderr (and stdout) going to a file, as `cmd > log 2>&1` or nohup would."""
    out = tmp_path / "stderr.log"
    with out.open("w") as f:
        proc = subprocess.run(
            [*cmd, *args], stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=_env(), timeout=120
        )
    return proc.returncode, out.read_text()


def test_plain_line_per_batch_when_stderr_is_a_file(fake_cli: list[str], tmp_path: Path) -> None:
    rc, text = _run_to_file(fake_cli, tmp_path, "fake-run", "--rows", "6", "--batch", "2")
    assert rc == 0, text
    lines = text.splitlines()
    batch_lines = [m for m in map(LINE.match, lines) if m]
    # One line per batch, counting up, with the retries so far.
    assert [(m[1], m[3]) for m in batch_lines] == [("2", "1"), ("4", "2"), ("6", "3")]
    assert batch_lines[0][2].startswith("ETA ")
    assert batch_lines[-1][2].startswith("done in ")
    assert "round-1: 6 rows to do" in lines
    assert "loading the model ..." in lines
    assert "\x1b" not in text  # no colour codes in a log file
    assert "━" not in text  # and no bar
    # A closing line longer than 80 columns stays one line.
    long_line = "kept rows: " + "/a/very/long/folder/name" * 8 + "/evolved.jsonl"
    assert long_line in lines


def test_resumed_rows_are_said_and_not_counted_as_fast(fake_cli: list[str], tmp_path: Path) -> None:
    rc, text = _run_to_file(fake_cli, tmp_path, "fake-run", "--resumed", "2")
    assert rc == 0, text
    lines = text.splitlines()
    assert "round-1: 4 of 6 rows to do (2 done by an earlier run)" in lines
    assert [m[1] for m in map(LINE.match, lines) if m] == ["4", "6"]


def test_rate_and_eta_count_only_this_invocation(caplog: pytest.LogCaptureFixture) -> None:
    from evolkit.progress import StepProgress

    now = [0.0]
    with caplog.at_level(logging.INFO, logger="evolkit.progress"):
        progress = StepProgress(
            "respond", total=100, done=50, stream_is_tty=False, clock=lambda: now[0]
        )
        with progress:
            now[0] = 10.0
            progress.advance(5, retries={"5xx": 1, "429": 2, "timeout": 0})
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "respond: 50 of 100 rows to do (50 done by an earlier run)"
    # 5 rows in 10 s is 0.5 rows/s (the 50 resumed rows do not count); 45 left take 90 s.
    assert messages[1] == (
        "respond: 55/100 rows (55%), 0.50 rows/s, ETA 1m30s, retries 3 (429: 2, 5xx: 1)"
    )
    # Left before the end: the closing line says where it stopped instead of "done".
    assert messages[2] == "respond: stopped at 55/100 rows after 10s, retries 3 (429: 2, 5xx: 1)"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("evolkit")
    handlers, level = list(logger.handlers), logger.level
    stderr_level = console_mod._stderr_level
    yield
    for h in list(logger.handlers):
        if h not in handlers:
            logger.removeHandler(h)
    logger.setLevel(level)
    console_mod._stderr_level = stderr_level


@pytest.mark.parametrize("terminal", [True, False])
def test_messages_are_printed_verbatim(
    terminal: bool, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Brackets in user text are text, not rich markup, on a terminal and in a log."""
    from evolkit.console import console, error_line, info, say, setup_logging, warn

    msg = "pip install 'evolkit[hf]' to read /data/run[x]/in[bold].jsonl"
    setup_logging(logging.INFO, terminal=terminal)
    with console.capture() as cap:
        info(msg)
        warn(msg)
        say(msg, label="kept rows:", style="green")
        error_line(msg)
    printed = cap.get() + capsys.readouterr().err  # plain lines go straight to sys.stderr
    for expected in (msg, f"warning: {msg}", f"kept rows: {msg}", f"error: {msg}"):
        assert expected in printed


def test_error_and_crash_lines(fake_cli: list[str], tmp_path: Path) -> None:
    rc, text = _run_to_file(fake_cli, tmp_path, "fake-run", "--then", "error")
    assert rc == 1
    assert text.splitlines()[-1] == (
        "error: cannot read /tmp/run[x]/in.jsonl: try pip install 'evolkit[hf]'"
    )
    assert "install the extra with pip install 'evolkit[hf]' to read data[x].jsonl" in text
    assert "warning: a warning about [bold]not bold[/bold]" in text

    rc, text = _run_to_file(fake_cli, tmp_path, "fake-run", "--then", "crash")
    assert rc == 1
    assert "Traceback" not in text
    assert text.splitlines()[-1].startswith("error: unexpected ValueError: boom [x] (")
    assert "-v" in text.splitlines()[-1]

    rc, text = _run_to_file(fake_cli, tmp_path, "-v", "fake-run", "--then", "crash")
    assert rc == 1
    assert "Traceback (most recent call last)" in text
    assert "ValueError: boom [x]" in text


def test_quiet_and_verbose(fake_cli: list[str], tmp_path: Path) -> None:
    info_line = "install the extra with pip install 'evolkit[hf]' to read data[x].jsonl"
    rc, default = _run_to_file(fake_cli, tmp_path, "fake-run")
    assert rc == 0
    assert info_line in default and "debug: a debug line" not in default

    rc, quiet = _run_to_file(fake_cli, tmp_path, "-q", "fake-run")
    assert rc == 0
    assert info_line not in quiet
    assert not any(LINE.match(x) for x in quiet.splitlines())  # no progress lines either
    assert "loading the model ..." not in quiet
    assert "warning: a warning about [bold]not bold[/bold]" in quiet  # warnings still shown
    assert any(x.startswith("kept rows: /a/very/long") for x in quiet.splitlines())  # and results

    rc, verbose = _run_to_file(fake_cli, tmp_path, "--verbose", "fake-run")
    assert rc == 0
    assert "debug: a debug line" in verbose and info_line in verbose

    rc, both = _run_to_file(fake_cli, tmp_path, "-v", "-q", "fake-run")
    assert rc == 2 and "use -v or -q, not both" in both


def test_run_log_gets_the_lines_even_under_quiet(fake_cli: list[str], tmp_path: Path) -> None:
    run_log = tmp_path / "run.log"
    rc, _ = _run_to_file(fake_cli, tmp_path, "-q", "fake-run", "--log", str(run_log))
    assert rc == 0
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    lines = run_log.read_text().splitlines()
    progress = [x for x in lines if re.match(stamp + r" INFO round-1: \d/6 rows", x)]
    assert len(progress) == 3
    assert any(
        re.fullmatch(stamp + r" INFO install the extra with pip install 'evolkit\[hf\]'.*", x)
        for x in lines
    )
    assert any(re.fullmatch(stamp + r" WARNING a warning about \[bold\].*", x) for x in lines)

    # How a run ended is in its log: a crash keeps its traceback there even without -v.
    rc, text = _run_to_file(
        fake_cli, tmp_path, "fake-run", "--log", str(run_log), "--then", "crash"
    )
    assert rc == 1 and "Traceback" not in text
    logged = run_log.read_text()
    assert "ERROR unexpected ValueError: boom [x]" in logged
    assert "Traceback (most recent call last)" in logged
    # The file is released when the run ends (no handler left behind).
    assert not any(
        isinstance(h, logging.FileHandler) for h in logging.getLogger("evolkit").handlers
    )


def test_attach_and_detach_log_file(tmp_path: Path, restore_logging: None) -> None:
    from evolkit.console import attach_log_file, detach_log_file, info, setup_logging

    setup_logging(logging.WARNING, terminal=False)  # -q: info hidden on stderr ...
    path = tmp_path / "run.log"
    handler = attach_log_file(path)
    info("written [x] to the file")
    detach_log_file(handler)
    info("after detaching")
    text = path.read_text()
    assert "INFO written [x] to the file" in text  # ... but kept in the file
    assert "after detaching" not in text


def test_ctrl_c_prints_one_line_and_exits_130(fake_cli: list[str]) -> None:
    proc = subprocess.Popen(
        [*fake_cli, "fake-run", "--then", "sleep"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # As a shell's foreground job gets it: a background job of a script inherits SIGINT
        # ignored, and so would this child if the test runner was started that way.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the command is inside its progress loop
        seen.append(line)
        if "ready for ctrl-c" in line:
            break
    else:
        pytest.fail("the fake command ended early: " + "".join(seen))
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert rest.splitlines() == [INTERRUPTED]  # exactly one line, no traceback, no "Aborted!"


def test_help_and_usage_errors_keep_their_exit_codes(fake_cli: list[str], tmp_path: Path) -> None:
    rc, text = _run_to_file(fake_cli, tmp_path, "--help")
    assert rc == 0 and "--quiet" in text and "evolve" in text
    rc, text = _run_to_file(fake_cli, tmp_path, "evolve")
    assert rc == 2 and "Missing argument" in text


def test_terminal_shows_a_bar_instead_of_lines(fake_cli: list[str], tmp_path: Path) -> None:
    """On a terminal the per-batch lines are drawn as a bar, and run.log still gets them."""
    run_log = tmp_path / "run.log"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*fake_cli, "fake-run", "--log", str(run_log)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=_env(),
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "━" in screen and "6/6" in screen
    assert not any(LINE.match(x.strip()) for x in screen.splitlines())
    assert "install the extra with pip install 'evolkit[hf]'" in re.sub(
        r"\x1b\[[0-9;]*m", "", screen
    )
    assert len([x for x in run_log.read_text().splitlines() if " INFO round-1: " in x]) == 4
