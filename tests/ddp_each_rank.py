"""What every rank of the reference job in test_training_ddp.py does (torchrun starts this file twice).

    torchrun --standalone --nproc-per-node 2 tests/ddp_each_rank.py RECIPE.toml DATA.npz OUT/

1. One AWP step, three ways, from the same weights: one process on the whole batch; two ranks on half
   each through the trainer's step; two ranks perturbing along their own half's gradient (what the
   trainer must not do). Writes ``rank{r}-{alone,ddp,local}.safetensors``.
2. The held-out guard through ``_check_holdout``: rank 0 measures and decides; rank 1's own held-out
   labels are scrambled, so it would decide otherwise if it measured for itself. Writes
   ``rank{r}-guard.json`` (a restore-and-stop case, then a new-best case).
3. The recipe trained uninterrupted, as ``bastion train`` trains it; each rank writes its own final
   weights: ``rank{r}-{shipped,raw}.safetensors``.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from bastion.data import Dataset, load_data
from bastion.defenses.training import load_recipe, recipe_from_dict, train
from bastion.defenses.training.awp import weight_perturbation
from bastion.defenses.training.checkpoint import TrainingState
from bastion.defenses.training.distributed import join
from bastion.defenses.training.losses import objective
from bastion.defenses.training.trainer import TrainingMonitor, _check_holdout, make_optimizer, train_step
from bastion.models.architectures import digits_cnn
from training_helpers import digits_raw

GAMMA = 0.05


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def awp_steps(ranks, data, out):
    x, y = data.x[:64], data.y[:64]
    mine = slice(32 * ranks.rank, 32 * (ranks.rank + 1))
    recipe = recipe_from_dict(digits_raw("clean", awp={"gamma": GAMMA},
                                         optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0}))
    torch.manual_seed(0)
    start = digits_cnn()
    bounds, generator = (0.0, 1.0), torch.Generator().manual_seed(0)

    alone = copy.deepcopy(start)
    train_step(recipe, alone, make_optimizer(recipe, alone), x, y, 0.2, bounds, generator, perturb=True)

    shared = copy.deepcopy(start)
    train_step(recipe, ranks.synchronised(shared), make_optimizer(recipe, shared), x[mine], y[mine], 0.2, bounds,
               generator, perturb=True)

    local = copy.deepcopy(start)
    wrapped, optimizer = DistributedDataParallel(local), make_optimizer(recipe, local)
    with weight_perturbation(local, lambda: objective(recipe, local, x[mine], x[mine], y[mine], 0.2).loss, GAMMA):
        loss = objective(recipe, wrapped, x[mine], x[mine], y[mine], 0.2).loss
        optimizer.zero_grad()
        loss.backward()
    optimizer.step()

    for name, module in (("alone", alone), ("ddp", shared), ("local", local)):
        save_file(snapshot(module), f"{out}/rank{ranks.rank}-{name}.safetensors")


def guard_decisions(ranks, data, out):
    recipe = recipe_from_dict(digits_raw("clean", guard={"collapse_drop": 0.2, "steps": 3}, data={"holdout": 50}))
    holdout = data.take(50)
    if ranks.rank == 1:
        holdout = Dataset(holdout.name, holdout.x, (holdout.y + 1) % 10, holdout.num_classes, holdout.bounds)
    torch.manual_seed(1)
    judged = digits_cnn()
    best = snapshot(judged)
    outcome = {}
    # best_robust 1.0: any figure is a collapse (restore, stop); -1.0: any figure is a new best.
    for case, best_robust in (("restore", 1.0), ("best", -1.0)):
        with torch.no_grad():
            for p in judged.parameters():
                p.add_(0.05)
        state = TrainingState("x", 0, epoch=3, best_epoch=2, best_robust=best_robust, best_weights=best)
        record = {}
        _check_holdout(recipe, judged, holdout, state, record, TrainingMonitor(), ranks)
        now = judged.state_dict()
        outcome[case] = {"record": record, "finished": state.finished, "restored": state.restored_epoch,
                         "best_epoch": state.best_epoch, "events": state.events,
                         "weights_are_old_best": all(torch.equal(now[k], best[k]) for k in now),
                         "best_is_current": all(torch.equal(now[k], state.best_weights[k]) for k in now)}
        best = snapshot(judged)
    with open(f"{out}/rank{ranks.rank}-guard.json", "w") as fh:
        json.dump(outcome, fh)


def main():
    recipe_file, data_file, out = sys.argv[1:]
    ranks = join()
    data = load_data(data_file, "train")
    awp_steps(ranks, data, out)
    guard_decisions(ranks, data, out)
    result = train(load_recipe(recipe_file), data, ranks=ranks)
    for kind, module in (("shipped", result.model), ("raw", result.raw_model)):
        save_file(snapshot(module), f"{out}/rank{ranks.rank}-{kind}.safetensors")
    ranks.close()


if __name__ == "__main__":
    main()
