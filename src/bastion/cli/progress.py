"""The one progress display of the long commands (bench, train, certify): a bar on stderr.

:class:`Progress` is a rich progress bar with lines printed above it, or nothing at all
when disabled (``--quiet``, ``--json``). Each command adapts its library's progress hook
to it: :class:`BenchProgress` takes the benchmark runner's events, :class:`TrainProgress`
is the trainer's monitor, and certify advances the bar once per sample.
"""

from __future__ import annotations

from typing import Any


class Progress:
    """One bar (with optional extra fields shown after it) and lines above it; silent when disabled."""

    def __init__(self, enabled: bool, *, fields: str = "", remaining: bool = False) -> None:
        self.enabled = enabled
        self.fields = fields
        self.remaining = remaining
        self.bar = None
        self.task = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
            if self.fields:
                columns.append(TextColumn(self.fields))
            columns.append(TimeRemainingColumn() if self.remaining else TimeElapsedColumn())
            self.bar = RichProgress(*columns, console=Console(stderr=True), transient=True)
            self.bar.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.stop()
        return False

    def start(self, description: str, total: int | None, completed: int = 0, **fields: Any) -> None:
        """Show the bar (again, with a new total, if it was shown before)."""
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(description, total=total, completed=completed, **fields)
        else:
            self.bar.update(self.task, description=description, total=total, completed=completed, **fields)

    def update(self, *, description: str | None = None, completed: int | None = None, advance: int = 0,
               **fields: Any) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.start(description or "", None)
        changes = {"description": description, "completed": completed}
        self.bar.update(self.task, advance=advance, **{k: v for k, v in changes.items() if v is not None},
                        **fields)

    def advance(self, steps: int = 1) -> None:
        self.update(advance=steps)

    def line(self, text: str) -> None:
        """A line of text above the bar (kept when the bar goes)."""
        if self.bar is not None:
            self.bar.console.print(text, highlight=False, soft_wrap=True)


class BenchProgress:
    """The benchmark runner's events (:mod:`bastion.evaluation.runner`) on a :class:`Progress`."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __call__(self, event) -> None:
        from bastion.evaluation.runner import IndicatorsStarted, Resumed, UnitFinished, UnitStarted

        show = self.progress
        if isinstance(event, Resumed):
            show.line(f"resuming: {len(event.state.units)} attack run(s) already finished")
        elif isinstance(event, UnitStarted):
            description = f"eps {event.eps:g} {event.attack} on {event.standing} samples"
            show.start(description, event.total, completed=event.position - 1)
        elif isinstance(event, UnitFinished):
            unit = event.unit
            show.line(f"  eps {unit.eps:g} {unit.attack}: broke {len(unit.broken)} of {unit.standing} "
                      f"({unit.seconds:.1f} s)")
            show.advance()
        elif isinstance(event, IndicatorsStarted):
            show.update(description="attack-failure indicators")
