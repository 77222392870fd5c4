"""dockercomp/terminal.py: bars with rate and time left on a terminal and nothing in a pipe,
colour only on a terminal, and what a master sent shown as the characters it is."""

import io
import re

from rich.console import Console

from dockercomp import terminal


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def on_terminal(**options: object) -> tuple[Console, io.StringIO]:
    stream = Tty()
    return Console(file=stream, force_terminal=True, width=160, **options), stream  # type: ignore[arg-type]


def test_a_bar_of_bytes_shows_the_rate_and_the_time_left_on_a_terminal() -> None:
    where, stream = on_terminal()
    with terminal.Bar("uploading", 10 << 20, transfer=True, where=where) as bar:
        for sent in range(1 << 20, 6 << 20, 1 << 20):
            bar.update(sent, note="5 chunks")
    drawn = stream.getvalue()
    assert "uploading" in drawn and "5 chunks" in drawn
    assert re.search(r"\d+(\.\d+)? [kMG]?B/s", drawn), drawn  # the rate
    assert re.search(r"\d+:\d\d:\d\d|-:--:--", drawn), drawn  # the time left


def test_a_bar_of_units_counts_them_and_their_rate() -> None:
    where, stream = on_terminal()
    with terminal.Bar("computing", 40, where=where) as bar:
        for done in range(0, 30, 5):
            bar.update(done, 40, "3 running, 0 failed")
    drawn = stream.getvalue()
    assert "25/40" in drawn and "3 running, 0 failed" in drawn and "/s" in drawn


def test_nothing_is_drawn_into_a_pipe_or_when_not_shown() -> None:
    pipe = io.StringIO()
    with terminal.Bar("uploading", 100, transfer=True, where=terminal.console(pipe)) as bar:
        bar.update(50)
    assert pipe.getvalue() == ""
    where, stream = on_terminal()
    with terminal.Bar("uploading", 100, shown=False, where=where) as bar:
        bar.update(50)
    assert stream.getvalue() == ""


def test_a_table_in_a_pipe_is_plain_whole_lines() -> None:
    out = io.StringIO()
    long = "x" * 300
    terminal.show(
        terminal.table(("JOB", "NAME", "STATE"), [("j1", long, "done"), ("j2", "b", "failed")], ("STATE",)), out
    )
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["JOB", "NAME", "STATE"]
    assert lines[1].split() == ["j1", long, "done"] and lines[2].split() == ["j2", "b", "failed"]
    assert "\x1b" not in out.getvalue() and all(line == line.rstrip() for line in lines)


def test_a_state_is_coloured_on_a_terminal_only_and_not_under_no_color(monkeypatch) -> None:
    rows = [("j1", "failed")]
    out = Tty()
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal.show(terminal.table(("JOB", "STATE"), rows, ("STATE",)), out)
    assert "\x1b[" in out.getvalue() and "failed" in out.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Tty()
    terminal.show(terminal.table(("JOB", "STATE"), rows, ("STATE",)), plain)
    assert "\x1b[1;31m" not in plain.getvalue() and "\x1b[31m" not in plain.getvalue()


def test_what_a_master_sent_is_never_markup_nor_control_characters() -> None:
    out = Tty()
    hostile = "[bold red]x[/] [link=https://evil.example]click[/link] \x1b[2J\x07bell"
    terminal.show(terminal.table(("NAME",), [(hostile,)]), out)
    shown = out.getvalue()
    assert "[bold red]x[/]" in shown and "[link=https://evil.example]click[/link]" in shown
    assert "\x1b[2J" not in shown and "\x07" not in shown and "\x1b]8;" not in shown  # no clear, bell nor hyperlink


def test_sizes_for_people() -> None:
    assert [terminal.size(n) for n in (None, 0, 1023, 1536, 5 << 20, 3 << 30)] == [
        "-", "0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 GiB",
    ]  # fmt: skip
