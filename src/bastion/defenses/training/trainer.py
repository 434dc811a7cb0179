"""The training loop: epochs, schedule, per-epoch robust check, guard, checkpoints, bundle.

:func:`train` runs a :class:`~bastion.defenses.training.recipe.Recipe` on a
training set and returns the trained module with its history. After every
epoch it measures clean and robust accuracy (bastion's own PGD or APGD attack) on
a held-out slice of the training data, keeps the best weights, applies the
catastrophic-overfitting guard, and writes a checkpoint atomically, so a run
killed at any moment resumes from its last finished epoch and ends with the
same weights an uninterrupted run would have.

Two recipe options change what a step does and what ships: ``[awp]`` takes each
step's gradient at adversarially perturbed weights (:mod:`.awp`), and ``[average]``
keeps an exponential moving average of the weights (:mod:`.averaging`), which is
then the model: the held-out check judges it, the guard keeps or restores it, and
the bundle holds it (``TrainResult.raw_model`` has the trained weights themselves).

With ``ranks`` (in a torchrun job) several processes train the model together, each on
its shard of every batch, with the recipe's ``batch_size`` as the global batch; how
everything stays identical on every rank is :mod:`.distributed`'s docstring. One process
(``ranks`` left out) trains exactly as before.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks import get_attack
from bastion.data import Dataset
from bastion.defenses.training.averaging import WeightAverage
from bastion.defenses.training.awp import weight_perturbation
from bastion.defenses.training.checkpoint import (TrainingState, load_checkpoint, read_checkpoint, refuse_to_overwrite,
                                                  save_checkpoint)
from bastion.defenses.training.distributed import BACKEND, Ranks, gradient_average, local_replica
from bastion.defenses.training.losses import BatchLoss, objective, training_inputs
from bastion.defenses.training.recipe import Recipe
from bastion.errors import ConfigError, DataError, ThreatModelError
from bastion.models.architectures import ARCHITECTURES
from bastion.models.fit import check_fit
from bastion.models.loaded import LoadedModel
from bastion.threat import ThreatModel


class TrainingMonitor:
    """Receives progress events; the CLI subclasses it to draw a progress bar. All methods optional."""

    def start(self, *, epochs: int, first_epoch: int, steps_per_epoch: int) -> None: ...

    def step(self, *, epoch: int, loss: float, accuracy: float) -> None: ...

    def epoch(self, record: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class TrainResult:
    model: nn.Module
    recipe: Recipe
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    events: list[str] = field(default_factory=list)
    resumed_from: int | None = None
    raw_model: nn.Module | None = None  # the trained weights themselves, when ``model`` holds their average


def train(recipe: Recipe, data: Dataset, *, model: nn.Module | None = None, checkpoint_dir: str | Path | None = None,
          resume: bool = False, monitor: TrainingMonitor | None = None, ranks: Ranks | None = None) -> TrainResult:
    """Train ``model`` (default: a fresh ``recipe.model.architecture``) on ``data`` with ``recipe``.

    ``ranks``: this process's place in a torchrun job (:func:`.distributed.join`); every rank calls
    ``train`` with the same arguments, and rank 0 alone writes ``checkpoint_dir``.
    """
    monitor = monitor or TrainingMonitor()
    ranks = ranks or Ranks()
    seed = recipe.recipe.seed
    train_set, holdout = split_holdout(data, recipe.data.holdout)
    if recipe.guard.collapse_drop > 0 and holdout is None:
        raise ConfigError(f"{recipe.source}: key 'guard.collapse_drop' needs held-out data: set data.holdout > 0")
    ranks.batch_size(recipe)  # refuses a batch the ranks cannot share, before any rank waits for another
    with deterministic():
        torch.manual_seed(seed)
        if model is None:
            model = ARCHITECTURES[recipe.model.architecture](num_classes=data.num_classes)
        check_training_inputs(recipe, model, data)
        for p in model.parameters():  # a bundle to fine-tune arrives frozen
            p.requires_grad_(True)
        optimizer = make_optimizer(recipe, model)
        average = WeightAverage(model, recipe.average.decay) if recipe.average.decay > 0 else None
        generator = torch.Generator().manual_seed(seed)
        state = TrainingState(recipe_digest=recipe.digest(), seed=seed, processes=ranks.world_size)
        resumed_from = None
        saved = None
        if checkpoint_dir is not None:  # rank 0 reads it for every rank
            saved = ranks.broadcast_bytes(read_checkpoint(checkpoint_dir) if ranks.is_main else None)
        if saved is not None:
            if not resume:
                raise refuse_to_overwrite(checkpoint_dir)
            state = load_checkpoint(checkpoint_dir, model, optimizer, generator,
                                    recipe_digest=state.recipe_digest, seed=seed, average=average, data=saved)
            resumed_from = state.epoch
            monitor.message(f"resuming from the checkpoint after epoch {state.epoch} in {checkpoint_dir}")
            if state.processes != ranks.world_size:
                monitor.message(f"the checkpoint was written by {state.processes} training process(es), this run has "
                                f"{ranks.world_size}: same global batch, other random draws than an uninterrupted run")
                state.processes = ranks.world_size
        elif resume:
            monitor.message(f"no checkpoint in {checkpoint_dir}: starting from scratch")
        if recipe.awp.gamma > 0 and recipe.awp.warmup_epochs >= recipe.optimizer.epochs:
            monitor.message(f"AWP never starts: awp.warmup_epochs ({recipe.awp.warmup_epochs}) is not below the "
                            f"{recipe.optimizer.epochs} epochs")
        _run_epochs(recipe, model, optimizer, average, generator, state, train_set, holdout, checkpoint_dir, monitor,
                    ranks)
    shipped = average.module if average is not None else model
    if _ships_best(recipe, state):
        shipped.load_state_dict(state.best_weights)
    ranks.check_same_weights(shipped, model)
    for module in (shipped, model):
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    metrics = _metrics(recipe, state)
    if ranks.distributed:
        metrics["distributed"] = {"processes": ranks.world_size, "backend": BACKEND,
                                  "batch_per_process": ranks.batch_size(recipe)}
    return TrainResult(model=shipped, recipe=recipe, history=state.history, metrics=metrics,
                       events=state.events, resumed_from=resumed_from,
                       raw_model=model if average is not None else None)


def check_training_inputs(recipe: Recipe, model: nn.Module, data: Dataset) -> None:
    """Refuse, before the first step, data ``model`` cannot take (sample shape, labels outside its
    classes) and a training eps beyond the input box of these samples; one line each."""
    check_fit(LoadedModel(module=model, name=recipe.model.architecture), data)
    try:
        threat = ThreatModel(norm=recipe.threat.norm, eps=recipe.threat.eps, bounds=data.bounds)
        threat.check_sample_shape(data.input_shape)
    except ThreatModelError as exc:
        raise ConfigError(f"{recipe.source}: key 'threat.eps': {exc}") from None


def train_step(recipe: Recipe, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               eps: float, bounds: tuple[float, float], generator: torch.Generator, *, perturb: bool) -> BatchLoss:
    """One optimizer step: the inner maximisation at the current weights, then the objective's gradient
    (at AWP-perturbed weights when ``perturb``; the step itself starts from the unperturbed ones).

    ``model`` may be wrapped in ``DistributedDataParallel`` (``x`` is then this rank's shard of the
    batch): the inner attack and AWP's ascent run on the rank's own replica, AWP's ascent gradient is
    averaged over the ranks before the perturbation is taken, and backward averages the step's.
    """
    replica = local_replica(model)
    x_train = training_inputs(recipe, replica, x, y, eps, bounds, generator)

    def loss_of(module: nn.Module) -> BatchLoss:
        return objective(recipe, module, x, x_train, y, eps)

    perturbation = (weight_perturbation(replica, lambda: loss_of(replica).loss, recipe.awp.gamma,
                                        reduce=gradient_average(model)) if perturb else nullcontext())
    with perturbation:
        out = loss_of(model)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
    optimizer.step()
    return out


def _run_epochs(recipe: Recipe, model: nn.Module, optimizer: torch.optim.Optimizer, average: WeightAverage | None,
                generator: torch.Generator, state: TrainingState, train_set: Dataset, holdout: Dataset | None,
                checkpoint_dir, monitor, ranks: Ranks) -> None:
    settings = recipe.optimizer
    n = len(train_set)
    batch_size = ranks.batch_size(recipe)  # this process's share of the recipe's batch
    steps_per_epoch = math.ceil(ranks.shard_size(n) / batch_size)
    total_steps = settings.epochs * steps_per_epoch
    evaluated = average.module if average is not None else model  # what the held-out check judges and ships
    stepper = ranks.synchronised(model)  # with several ranks, backward all-reduces the gradient
    monitor.start(epochs=settings.epochs, first_epoch=state.epoch, steps_per_epoch=steps_per_epoch)
    while state.epoch < settings.epochs and not state.finished:
        wall, cpu = time.perf_counter(), time.process_time()
        perturb = recipe.awp.gamma > 0 and state.epoch >= recipe.awp.warmup_epochs
        if ranks.distributed:  # draws fixed by (seed, epoch, rank): resuming needs no generator state
            generator = ranks.epoch_generator(recipe.recipe.seed, state.epoch)
            order = ranks.shard(n, recipe.recipe.seed, state.epoch)
        else:
            order = torch.randperm(n, generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in order.split(batch_size):
            x = random_shift(train_set.x[batch], recipe.augment.shift, generator)
            y = train_set.y[batch]
            eps = training_eps(recipe, state.step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, state.step, total_steps)
            out = train_step(recipe, stepper, optimizer, x, y, eps, train_set.bounds, generator, perturb=perturb)
            if average is not None:
                average.update(model, state.step)
            state.step += 1
            state.awp_steps += int(perturb)
            loss_sum += out.loss.item() * len(y)
            correct += (out.logits.argmax(1) == y).sum().item()
            seen += len(y)
            monitor.step(epoch=state.epoch + 1, loss=loss_sum / seen, accuracy=correct / seen)
        state.epoch += 1
        loss_sum, correct, seen = ranks.sum(loss_sum, correct, seen)  # the epoch over every rank's shard
        record = {"epoch": state.epoch, "eps": round(eps, 6), "lr": optimizer.param_groups[0]["lr"],
                  "loss": loss_sum / seen, "train_accuracy": correct / seen}
        if recipe.awp.gamma > 0:
            record["awp"] = perturb
        if holdout is not None:
            _check_holdout(recipe, evaluated, holdout, state, record, monitor, ranks)
        state.seconds += time.perf_counter() - wall
        state.cpu_seconds += time.process_time() - cpu
        record["seconds"] = round(state.seconds, 2)
        state.history.append(record)
        if checkpoint_dir is not None and ranks.is_main:
            save_checkpoint(checkpoint_dir, state, model, optimizer, generator, average)
        monitor.epoch(record)


class GuardAction(IntEnum):
    """What the guard does after a held-out check."""

    KEEP = 0      # carry on
    BEST = 1      # carry on, and remember these weights as the best
    RESTORE = 2   # collapse: restore the best weights and stop


def _check_holdout(recipe: Recipe, model: nn.Module, holdout: Dataset, state: TrainingState, record: dict, monitor,
                   ranks: Ranks) -> None:
    """Rank 0 measures the held-out figures and takes the guard's decision; every rank records both and
    applies the decision."""
    key = holdout_key(recipe)
    shared = [0.0, 0.0, 0.0]
    if ranks.is_main:
        figures = evaluate_holdout(recipe, model, holdout)
        shared = [figures["holdout_clean"], figures[key], guard_action(recipe, state, figures[key])]
    clean, robust, action = ranks.broadcast_floats(shared)
    record.update({"holdout_clean": clean, key: robust})
    _apply_guard(recipe, model, state, record, monitor, GuardAction(int(action)))


def guard_action(recipe: Recipe, state: TrainingState, robust: float) -> GuardAction:
    """The guard's decision on a held-out figure: a collapse of more than ``guard.collapse_drop`` below
    the best so far restores the best, a figure at least as good as the best becomes the best."""
    drop = recipe.guard.collapse_drop
    if drop > 0 and state.best_weights and state.best_robust - robust > drop:
        return GuardAction.RESTORE
    if robust >= state.best_robust:
        return GuardAction.BEST
    return GuardAction.KEEP


def _apply_guard(recipe: Recipe, model: nn.Module, state: TrainingState, record: dict, monitor,
                 action: GuardAction | None = None) -> None:
    """Track the best held-out robust accuracy; on a collapse, restore the best weights and stop.

    ``action`` is the decision when another rank took it; by default it is taken here from ``record``.
    """
    robust = record[holdout_key(recipe)]
    if action is None:
        action = guard_action(recipe, state, robust)
    if action is GuardAction.RESTORE:
        text = (f"catastrophic overfitting at epoch {state.epoch}: held-out {holdout_label(recipe)} accuracy fell "
                f"from {state.best_robust:.1%} (epoch {state.best_epoch}) to {robust:.1%}; restored the epoch "
                f"{state.best_epoch} weights and stopped")
        model.load_state_dict(state.best_weights)
        state.events.append(text)
        state.restored_epoch = state.best_epoch
        state.finished = True
        record["restored_epoch"] = state.best_epoch
        monitor.message(text)
        return
    if action is GuardAction.BEST:
        state.best_robust, state.best_epoch = robust, state.epoch
        state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        record["best"] = True


def holdout_key(recipe: Recipe) -> str:
    """The held-out figure the guard tracks: accuracy under noise for Gaussian training, else robust accuracy."""
    return "holdout_noisy" if recipe.method == "gaussian" else "holdout_robust"


def holdout_label(recipe: Recipe) -> str:
    """How that figure was measured, for messages: 'apgd-ce-20' or 'noise sigma 0.25'."""
    if recipe.method == "gaussian":
        return f"noise sigma {recipe.noise.sigma:g}"
    return f"{recipe.guard.attack}-{recipe.guard.steps}"


def evaluate_holdout(recipe: Recipe, model: nn.Module, holdout: Dataset) -> dict[str, float]:
    """Clean accuracy, and robust accuracy at the recipe's full eps under bastion's ``guard.attack``
    (for Gaussian training: accuracy on one noisy copy of each held-out image, with a fixed seed)."""
    model.eval()
    if recipe.method == "gaussian":
        noise = torch.randn(holdout.x.shape, generator=torch.Generator().manual_seed(recipe.recipe.seed))
        with torch.no_grad():
            clean = (model(holdout.x).argmax(1) == holdout.y).float().mean().item()
            noisy = (model(holdout.x + recipe.noise.sigma * noise).argmax(1) == holdout.y).float().mean().item()
        return {"holdout_clean": clean, "holdout_noisy": noisy}
    threat = ThreatModel(norm=recipe.threat.norm, eps=recipe.threat.eps, bounds=holdout.bounds)
    attack = get_attack(recipe.guard.attack)(threat, steps=recipe.guard.steps, restarts=recipe.guard.restarts,
                                             seed=recipe.recipe.seed)
    result = attack.run(model, holdout.x, holdout.y)[0]  # run() restores modes and requires_grad after
    return {"holdout_clean": result.clean_accuracy, "holdout_robust": result.robust_accuracy}


def split_holdout(data: Dataset, size: int) -> tuple[Dataset, Dataset | None]:
    """The last ``size`` samples (the bundled splits are shuffled) become the held-out check set."""
    if size == 0:
        return data, None
    if size * 2 > len(data):
        raise DataError(f"{data.name}: {len(data)} training samples cannot spare {size} for the held-out check; "
                        "lower data.holdout in the recipe")
    cut = len(data) - size
    keep = Dataset(data.name, data.x[:cut], data.y[:cut], data.num_classes, data.bounds)
    held = Dataset(f"{data.name}:holdout", data.x[cut:], data.y[cut:], data.num_classes, data.bounds)
    return keep, held


def training_eps(recipe: Recipe, step: int, total_steps: int) -> float:
    """The training radius: grows linearly from 0 over the first ``threat.ramp`` of the steps."""
    ramp_steps = recipe.threat.ramp * total_steps
    if ramp_steps <= 0:
        return recipe.threat.eps
    return recipe.threat.eps * min(1.0, (step + 1) / ramp_steps)


def learning_rate(recipe: Recipe, step: int, total_steps: int) -> float:
    """The schedule as a pure function of the step, so resuming needs only the step count."""
    peak = recipe.optimizer.lr
    progress = step / max(total_steps, 1)
    schedule = recipe.optimizer.schedule
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    # one-cycle (triangle): 0 -> peak over the first 40% of the steps, then back down to 0.
    rise = 0.4
    return peak * (progress / rise if progress < rise else (1 - progress) / (1 - rise))


def make_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    settings = recipe.optimizer
    if settings.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay, nesterov=settings.nesterov and settings.momentum > 0)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in each direction, filling with zeros."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]   # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]   # (n, 1, 1, w)
    batch = torch.arange(n)[:, None, None, None]
    channels = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, channels, rows, cols]


@contextmanager
def deterministic():
    """Ask torch for deterministic kernels while training; restore the caller's setting after."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _ships_best(recipe: Recipe, state: TrainingState) -> bool:
    """Whether the bundle gets the best checked weights (keep = best, or the guard restored them)."""
    return bool(state.best_weights) and (recipe.guard.keep == "best" or state.restored_epoch is not None)


def _metrics(recipe: Recipe, state: TrainingState) -> dict[str, Any]:
    chosen = state.best_epoch if _ships_best(recipe, state) else state.epoch
    last = state.history[-1] if state.history else {}
    for record in state.history:
        if record["epoch"] == chosen:
            last = record
    metrics = {"epochs_run": state.epoch, "weights_from_epoch": chosen, "seconds": round(state.seconds, 1),
               "cpu_seconds": round(state.cpu_seconds, 1), "best_epoch": state.best_epoch,
               "weights": "average" if recipe.average.decay > 0 else "raw"}
    if recipe.awp.gamma > 0:
        metrics["awp_steps"] = state.awp_steps
    for key in ("holdout_clean", "holdout_robust", "holdout_noisy", "train_accuracy", "loss"):
        if key in last:
            metrics[key] = round(float(last[key]), 4)
    if state.events:
        metrics["events"] = list(state.events)
    return metrics
