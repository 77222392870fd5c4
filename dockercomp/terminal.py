"""What the CLI and the Python API draw, through rich: progress bars with their rate and time
left, tables, colour. rich decides what the stream can take: a bar is redrawn on a terminal and
in Jupyter (with ipywidgets) and not drawn at all into a pipe or a file; colour goes to a
terminal only, never where ``NO_COLOR`` is set. Every text a master sent is shown as
``printable`` text (no control character) and never read as rich markup, so a job name such
as ``[link=…]`` or ``\\x1b[2J`` stays those characters."""

import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from dockercomp.protocol.transport import printable

# the colour of a state wherever one is shown: a unit's, a job's, an attempt's, a client's
STYLES = {
    "done": "green", "succeeded": "green", "valid": "green", "online": "green",
    "running": "yellow", "leased": "yellow", "suspended": "magenta", "held": "magenta",
    "failed": "bold red", "errored": "red", "invalid": "red", "timed_out": "red", "quarantined": "bold red",
    "cancelled": "dim", "released": "dim", "offline": "dim", "ready": "cyan",
}  # fmt: skip


def console(stream: IO[str] | None = None) -> Console:
    """A console on ``stream`` (standard error by default: what is drawn there never mixes
    with the data a command prints); no width limit when the stream is not a terminal, so a
    pipe gets whole lines."""
    stream = stream or sys.stderr
    found = Console(file=stream, highlight=False, emoji=False)
    if not found.is_terminal:
        found = Console(file=stream, highlight=False, emoji=False, width=100_000, no_color=True)
    return found


def drawn(where: Console) -> bool:
    """Whether a bar can be redrawn here (a terminal, or Jupyter)."""
    return where.is_terminal or where.is_jupyter


class Bar:
    """A progress bar with its rate and time left: of bytes (``transfer``) or of units; with
        a note after it (running and failed units). Nothing is drawn where it cannot be redrawn,
    nor when not ``shown``."""

    def __init__(
        self, label: str, total: int, *, transfer: bool = False, shown: bool = True, where: Console | None = None
    ) -> None:
        self.where = where or console()
        columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
        if transfer:
            columns += [DownloadColumn(), TransferSpeedColumn()]
        else:
            columns += [MofNCompleteColumn(), TextColumn("{task.fields[rate]}")]
        columns += [TimeRemainingColumn(), TextColumn("{task.fields[note]}")]
        shown = shown and drawn(self.where)
        self.progress = Progress(*columns, console=self.where, disable=not shown, transient=False)
        self.task = self.progress.add_task(label, total=max(total, 1), note="", rate="")
        self.progress.start()

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        self.progress.update(self.task, completed=done, total=max(total, 1) if total is not None else None,
                             note=Text(printable(note)))  # fmt: skip
        task = self.progress.tasks[0]
        if task.speed:  # units a second (rich's own column shows bytes only)
            self.progress.update(self.task, rate=f"{task.speed:.1f}/s")

    def close(self) -> None:
        self.progress.stop()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], styled: Sequence[str] = ()) -> Table:
    """A table of plain cells (``printable``, one line each); a cell of a column named in
    ``styled`` takes the colour of the state it names."""
    shown = Table(*header, box=None, pad_edge=False, header_style="bold", show_edge=False)
    for row in rows:
        cells = []
        for name, cell in zip(header, row, strict=True):
            text = printable(str(cell))
            cells.append(Text(text, style=STYLES.get(text, "") if name in styled else ""))
        shown.add_row(*cells)
    return shown


def show(renderable: Any, stream: IO[str] | None = None) -> None:
    """Print a table (or any rich renderable) to standard output: in colour on a terminal,
    else as plain lines without the trailing blanks a column leaves."""
    stream = stream or sys.stdout
    where = console(stream)
    if where.is_terminal:
        where.print(renderable, overflow="ignore", crop=False)
        return
    with where.capture() as captured:
        where.print(renderable, overflow="ignore", crop=False)
    stream.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def size(n: int | None) -> str:
    """Bytes for people: 1.5 MiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
