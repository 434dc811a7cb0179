"""`bastion train`: adversarial training from a recipe, written out as a model bundle."""

from __future__ import annotations

from pathlib import Path

import click

from bastion.cli import main
from bastion.cli.common import emit_json, json_option, quiet_option, resume_requested, seed_range
from bastion.cli.progress import Progress, TrainProgress
from bastion.errors import TrainingProcessFailed, UsageError


@main.command()
@click.option("--recipe", "-r", "recipe_ref", required=True,
              help="Recipe name (clean, pgd-at, trades, trades-awp, mart, fgsm-rs, fast, fast-ema, gaussian-0.25, gaussian-0.5) "
                   "or path to a .toml recipe.")
@click.option("--data", "-d", "data_ref", default=None,
              help="Training data: mnist (bundled 4,000-image train split), digits, or a .npz/.pt file "
                   "with x and y. Default: the recipe's data.dataset.")
@click.option("--model", "-m", "model_ref", default=None,
              help="Architecture name to train from scratch, or a zoo name / bundle directory to fine-tune. "
                   "Default: the recipe's model.architecture.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Bundle directory to write (default: ./<architecture>-<recipe>).")
@click.option("--name", default=None, help="Model name recorded in the bundle (default: the folder name).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in <out>.ckpt/ (after a crash or kill; "
                                            "with no checkpoint there: a warning on stderr, and a new run).")
@click.option("--epochs", type=int, default=None, help="Override the recipe's epoch count (1 to 10,000).")
@click.option("--seed", type=seed_range(), default=None, help="Override the recipe's seed.")
@click.option("--nproc", type=click.IntRange(1, 1024), default=None,
              help="Train with N processes on this host (DistributedDataParallel over gloo), started by torch's "
                   "elastic launcher as `torchrun --nproc-per-node N -m bastion.train ...` would. The recipe's "
                   "batch_size stays the global batch: each process takes batch_size / (N x nodes).")
@click.option("--nnodes", type=click.IntRange(1, 65536), default=None,
              help="Hosts in the job (run this same command on each; with --rdzv-endpoint). Default 1.")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT",
              help="Where the hosts meet (torchrun's c10d rendezvous): the same address on every host.")
@click.option("--rdzv-id", default=None, help="Job id of the rendezvous, the same on every host (default "
                                              "bastion-train).")
@json_option
@quiet_option
def train(recipe_ref, data_ref, model_ref, out, name, resume, epochs, seed, nproc, nnodes, rdzv_endpoint, rdzv_id,
          as_json, quiet):
    """Train a model with a defense recipe and write it as a bundle.

    After every epoch it checks clean and robust (PGD/APGD) accuracy on held-out
    training images and writes a checkpoint, so --resume continues a killed run.
    `python -m bastion.train ...` is this command, and under torchrun
    (`torchrun --nproc-per-node N -m bastion.train ...`) each process is one rank.

    Example: bastion train --recipe fgsm-rs --out mnist-fast --nproc 2
    """
    import dataclasses
    import shutil

    from bastion.catalog import resolve
    from bastion.data import load_data
    from bastion.defenses.training import load_recipe, save_trained_bundle
    from bastion.defenses.training import train as run_training
    from bastion.defenses.training.checkpoint import checkpoint_path, refuse_to_overwrite
    from bastion.defenses.training.distributed import join, launched_by_torchrun, lost_peer, per_process_batch
    from bastion.defenses.training.trainer import check_training_inputs
    from bastion.fsutil import check_output_dir
    from bastion.models import ARCHITECTURES

    launcher_options = {"--nproc": nproc, "--nnodes": nnodes, "--rdzv-endpoint": rdzv_endpoint, "--rdzv-id": rdzv_id}
    given = [flag for flag, value in launcher_options.items() if value is not None]
    if given and launched_by_torchrun():
        raise UsageError(f"{given[0]} starts the launcher, and this process is already a rank of a launched job: "
                         "leave the launcher options to torchrun")
    recipe = load_recipe(resolve("defenses", recipe_ref)).with_overrides(epochs=epochs, seed=seed)
    data = load_data(data_ref or recipe.data.dataset, "train")
    initial, architecture = _initial_model(model_ref, recipe)
    module = initial.module if initial is not None else None
    if architecture != recipe.model.architecture:  # --model names another architecture to train from scratch
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, architecture=architecture))
    out_dir = Path(out or f"{architecture}-{recipe.name}")
    checkpoint_dir = out_dir.with_name(out_dir.name + ".ckpt")
    check_output_dir(out_dir, "bundle folder")
    check_output_dir(checkpoint_dir, "checkpoint folder")
    # Refusals before anything is printed; train() checks the same again.
    check_training_inputs(recipe, module if module is not None else ARCHITECTURES[architecture](
        num_classes=data.num_classes), data)
    if initial is not None:  # fine-tuning: the bundle records the model's classes, not the labels' count
        data = dataclasses.replace(data, num_classes=initial.num_classes)
    resume = resume_requested(resume, checkpoint_path(checkpoint_dir).is_file(), checkpoint_path(checkpoint_dir))

    if given and ((nproc or 1) * (nnodes or 1) > 1 or rdzv_endpoint):
        # Refuse here what every rank would refuse, before any process starts.
        per_process_batch(recipe, (nproc or 1) * (nnodes or 1))
        if checkpoint_path(checkpoint_dir).is_file() and not resume:
            raise refuse_to_overwrite(checkpoint_dir)
        rank_args = _rank_args(recipe_ref, data_ref, model_ref, out_dir, name, resume, epochs, seed, as_json, quiet)
        _launch(rank_args, nproc or 1, nnodes or 1, rdzv_endpoint, rdzv_id, checkpoint_dir)
        return

    ranks = join()  # rank 0 of 1 unless torchrun started this process
    try:
        show = not (quiet or as_json) and ranks.is_main
        with Progress(enabled=show, fields=TrainProgress.FIELDS, remaining=True) as progress:
            result = run_training(recipe, data, model=module, checkpoint_dir=checkpoint_dir, resume=resume,
                                  monitor=TrainProgress(progress, recipe), ranks=ranks)
    except RuntimeError as exc:
        if not (ranks.distributed and lost_peer(exc)):
            raise
        raise TrainingProcessFailed(f"training process {ranks.rank} lost the connection to another one (it stopped "
                                    f"or was killed). {_resume_hint(checkpoint_dir)}", exit_code=130) from None
    finally:
        ranks.close()
    if not ranks.is_main:  # rank 0 writes the bundle and reports
        return
    save_trained_bundle(result, out_dir, data, name=name or out_dir.name, architecture=architecture,
                        extra={"recipe_file": _display_path(recipe.source)})
    # The bundle now holds the result; the checkpoint only served to survive interruptions.
    shutil.rmtree(checkpoint_dir, ignore_errors=True)

    summary = {"bundle": str(out_dir), "recipe": recipe.name, "method": recipe.method, "data": data.name,
               "architecture": architecture, "seed": recipe.recipe.seed, "epochs": recipe.optimizer.epochs,
               "resumed_from_epoch": result.resumed_from, "metrics": result.metrics, "events": result.events}
    if as_json:
        emit_json(summary)
        return
    m = result.metrics
    click.echo(f"trained {architecture} with {recipe.name} ({recipe.method}) on {data.name}: "
               f"{m['epochs_run']} epochs, {m['seconds']:.0f} s ({m['cpu_seconds']:.0f} s CPU)")
    if "distributed" in m:
        d = m["distributed"]
        click.echo(f"  on {d['processes']} processes ({d['backend']}): {d['batch_per_process']} of each batch of "
                   f"{recipe.optimizer.batch_size} per process")
    if "holdout_noisy" in m:
        click.echo(f"  held-out check (epoch {m['weights_from_epoch']} weights): clean {m['holdout_clean']:.1%}, "
                   f"under noise sigma {recipe.noise.sigma:g} {m['holdout_noisy']:.1%}")
    elif "holdout_robust" in m:
        click.echo(f"  held-out check (epoch {m['weights_from_epoch']} weights): clean {m['holdout_clean']:.1%}, "
                   f"{recipe.guard.attack}-{recipe.guard.steps} robust {m['holdout_robust']:.1%} at {recipe.threat.norm} "
                   f"eps {recipe.threat.eps:g}")
    for event in result.events:
        click.echo(f"  note: {event}")
    click.echo(f"  bundle written to {out_dir}")
    if recipe.method == "gaussian":
        click.echo(f"  certify it: bastion certify --model {out_dir} --sigma {recipe.noise.sigma:g}")
    else:
        click.echo(f"  evaluate it: bastion bench --model {out_dir} --eps {recipe.threat.eps:g}")


def _rank_args(recipe_ref, data_ref, model_ref, out_dir, name, resume, epochs, seed, as_json, quiet) -> list[str]:
    """This command's options as every rank gets them (without the launcher's)."""
    args = ["--recipe", recipe_ref, "--out", str(out_dir)]
    for flag, value in (("--data", data_ref), ("--model", model_ref), ("--name", name), ("--epochs", epochs),
                        ("--seed", seed)):
        if value is not None:
            args += [flag, str(value)]
    return args + [flag for flag, on in (("--resume", resume), ("--json", as_json), ("--quiet", quiet)) if on]


def _launch(rank_args, nproc, nnodes, rdzv_endpoint, rdzv_id, checkpoint_dir) -> None:
    import sys

    from bastion.defenses.training.launcher import RDZV_ID, launch

    try:
        launch(rank_args, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id or RDZV_ID,
               resume_hint=_resume_hint(checkpoint_dir))
    except TrainingProcessFailed as exc:
        if exc.reported:  # the rank printed its one-line error
            sys.exit(exc.exit_code)
        raise


def _resume_hint(checkpoint_dir) -> str:
    return f"Finished epochs are checkpointed in {checkpoint_dir}: rerun with --resume to continue."


def _display_path(path: str) -> str:
    """A recipe's path relative to the working directory where it lies inside it (bundles get shared)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _initial_model(model_ref: str | None, recipe):
    """(the bundle to fine-tune, or None for a fresh model; architecture name) from --model."""
    from bastion.models import ARCHITECTURES, load_model
    from bastion.models.bundle import BundleMeta

    if model_ref is None:
        return None, recipe.model.architecture
    if model_ref in ARCHITECTURES:
        return None, model_ref
    loaded = load_model(model_ref)
    meta = loaded.meta
    if not isinstance(meta, BundleMeta) or meta.format != "safetensors":
        raise UsageError(f"--model {model_ref}: training starts from an architecture name "
                         f"({', '.join(ARCHITECTURES)}), a zoo name or a safetensors bundle directory")
    if meta.sanitizer:
        raise UsageError(f"--model {model_ref}: this bundle wraps the model in a sanitizer; train the bare model")
    return loaded, meta.architecture
