"""The one progress display of the long commands (bench, train, certify): a bar on stderr.

:class:`Progress` is a rich progress bar with lines printed above it, or nothing at all
when disabled (``--quiet``, ``--json``). Each command adapts its library's progress hook
to it: :class:`BenchProgress` takes the benchmark runner's events, :class:`TrainProgress`
is the trainer's monitor, and certify advances the bar once per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """One bar (with optional extra fields shown after it) and lines above it; silent when disabled.

    The bar is drawn only on a terminal; elsewhere (a log, a pipe) only the lines are written.
    """

    enabled: bool
    fields: str = ""         # a rich format of the task's fields, shown after the bar
    remaining: bool = False  # show the time remaining rather than the time elapsed
    console: Any = field(default=None, init=False)
    bar: Any = field(default=None, init=False)
    task: Any = field(default=None, init=False)

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        from rich.console import Console  # rich is imported only by commands that show progress

        self.console = Console(stderr=True)
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
            if self.fields:
                columns.append(TextColumn(self.fields))
            columns.append(TimeRemainingColumn() if self.remaining else TimeElapsedColumn())
            self.bar = RichProgress(*columns, console=self.console, transient=True)
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
        if self.console is not None:
            self.console.print(text, highlight=False, soft_wrap=True)


class BenchProgress:
    """The benchmark runner's events (:mod:`bastion.evaluation.runner`) on a :class:`Progress`; in a
    sharded run (:mod:`bastion.evaluation.executors`) the bar counts samples over every shard."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.running = 0

    def __call__(self, event) -> None:
        from bastion.evaluation.executors import ShardFinished, ShardsPlanned, ShardStarted
        from bastion.evaluation.runner import IndicatorsStarted, Resumed, UnitFinished, UnitStarted

        show = self.progress
        if isinstance(event, ShardsPlanned):
            shards, done = event.layout.shards, set(event.finished)
            if done:
                show.line(f"resuming: {len(done)} of {len(shards)} shard(s) already finished")
            show.start(f"{len(shards) - len(done)} shard(s) on {event.executor}", event.layout.n,
                       completed=sum(s.size for s in shards if s.index in done))
        elif isinstance(event, ShardStarted):
            self.running += 1
            show.update(description=f"{self.running} shard(s) running")
        elif isinstance(event, ShardFinished):
            self.running -= 1
            result = event.result
            robust, worker = result.record()["robust_at_largest_eps"], result.worker
            show.line(f"  {result.shard.describe()}: {robust} of {result.shard.size} robust "
                      f"({result.seconds:.1f} s on {worker.host} pid {worker.pid} {worker.device})")
            show.update(description=f"{self.running} shard(s) running", advance=result.shard.size)
        elif isinstance(event, Resumed):
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


class TrainProgress:
    """The trainer's monitor (see ``bastion.defenses.training.TrainingMonitor``) on a :class:`Progress`:
    loss and accuracy per step, a line per epoch with the held-out clean and robust accuracy."""

    FIELDS = ("loss {task.fields[loss]:.3f}  train acc {task.fields[acc]:.1%}  "
              "held-out clean {task.fields[clean]}  robust {task.fields[robust]}")

    def __init__(self, progress: Progress, recipe) -> None:
        self.progress = progress
        self.recipe = recipe
        self.epochs = 0

    def start(self, *, epochs: int, first_epoch: int, steps_per_epoch: int) -> None:
        self.epochs = epochs
        self.progress.start(f"epoch {first_epoch + 1}/{epochs}", epochs * steps_per_epoch,
                            completed=first_epoch * steps_per_epoch, loss=0.0, acc=0.0, clean="-", robust="-")

    def step(self, *, epoch: int, loss: float, accuracy: float) -> None:
        self.progress.update(advance=1, description=f"epoch {epoch}/{self.epochs}", loss=loss, acc=accuracy)

    def epoch(self, record: dict[str, Any]) -> None:
        # Imported here: the trainer needs torch, and `bastion --help` must start without it.
        from bastion.defenses.training.trainer import holdout_key, holdout_label

        clean = record.get("holdout_clean")
        robust = record.get(holdout_key(self.recipe))
        radius = "" if self.recipe.method in ("clean", "gaussian") else f"eps {record['eps']:.3f}  "
        line = (f"epoch {record['epoch']:>3}/{self.epochs}  {radius}loss {record['loss']:.3f}  "
                f"train {record['train_accuracy']:.1%}")
        if clean is not None:
            self.progress.update(clean=f"{clean:.1%}", robust=f"{robust:.1%}")
            line += f" | held-out clean {clean:.1%}  {holdout_label(self.recipe)} {robust:.1%}"
            if record.get("best"):
                line += "  (best)"
        self.progress.line(line + f"  {record['seconds']:.0f} s")

    def message(self, text: str) -> None:
        self.progress.line(text)
