"""One call for a whole benchmark: run the suite (resumable, in shards if asked), build the report, write it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.attacks.base import model_device
from bastion.data import Dataset
from bastion.errors import UsageError
from bastion.evaluation.executors import Executor, LocalExecutor, ShardEventHook, run_sharded
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.plots import PLOTS
from bastion.evaluation.report import build_report, write_report
from bastion.evaluation.runner import run_suite
from bastion.evaluation.shards import DEFAULT_SHARD_SIZE, ShardCheckpoints, ShardLayout
from bastion.evaluation.state import model_digest
from bastion.evaluation.suite import Suite
from bastion.fsutil import check_output_dir, check_output_file
from bastion.models.acceleration import Acceleration
from bastion.models.fit import check_fit
from bastion.models.loaded import LoadedModel
from bastion.models.preparation import prepare

CHECKPOINT = "checkpoint.json"
SHARD_CHECKPOINTS = "shards"  # one file per finished shard, in this folder of out_dir
#: The files a run writes in its report folder.
RUN_FILES = (CHECKPOINT, "report.json", "report.md", *PLOTS.values())


def has_checkpoint(out_dir: str | Path, *, sharded: bool) -> bool:
    """Whether ``out_dir`` holds a checkpoint that ``resume=True`` would continue."""
    out = Path(out_dir)
    return bool(ShardCheckpoints(out / SHARD_CHECKPOINTS).files()) if sharded else (out / CHECKPOINT).exists()


def check_report_folder(out: Path) -> None:
    """Refuse, before the run, a report folder that cannot be made or a directory or special file
    where one of :data:`RUN_FILES` goes (it would fail only after all the work)."""
    check_output_dir(out, "report folder")
    if out.is_dir():
        for name in RUN_FILES:
            check_output_file(out / name, "report file")


def check_inputs(model: LoadedModel, data: Dataset, suite: Suite, *, batch_size: int | None = None,
                 build_attacks: bool = True) -> int:
    """Everything a benchmark can refuse before it starts, each as one line; returns the class count.

    The data must fit the model (sample shape, labels: :func:`bastion.models.fit.check_fit`), the
    suite's eps must lie within the input box of these samples, and (``build_attacks``) every
    attack must accept the batch size. A caller that prints anything before the run (the CLI)
    calls it first, so a refusal is the only line it prints; :func:`benchmark` checks the data
    again and leaves the attacks to the run, which builds each with its own seed.
    """
    num_classes = check_fit(model, data)
    suite.check_inputs(tuple(data.bounds), tuple(data.input_shape))
    if build_attacks:
        threat = suite.threat(suite.epsilons[0], tuple(data.bounds))
        for spec in suite.attacks:
            suite.build(spec, threat, seed=0, batch_size=batch_size)
    return num_classes


def benchmark(model: LoadedModel, data: Dataset, suite: Suite, *, out_dir: str | Path | None = None,
              seed: int = 0, resume: bool = False, batch_size: int | None = None,
              on_event: ShardEventHook | None = None, command: str = "", shard_size: int | None = None,
              executor: Executor | None = None, acceleration: Acceleration | None = None) -> dict[str, Any]:
    """Run ``suite`` on ``model`` over ``data`` and return the report.

    With ``out_dir`` the run checkpoints to ``out_dir/checkpoint.json`` after every
    attack (``resume=True`` continues from it) and writes report.json, report.md and
    the plots there when it finishes. The model is checked on the samples first
    (:func:`bastion.models.preparation.prepare`: an ONNX conversion against onnxruntime,
    ``acceleration`` against fp32 eager); the report's ``evaluation`` says what passed.

    With ``shard_size`` or an ``executor`` the samples are cut into contiguous shards
    (``shard_size``, default :data:`DEFAULT_SHARD_SIZE`) that ``executor`` runs (default: one
    after another, here); each finished shard is checkpointed in ``out_dir/shards/``, and the
    report records the layout and the workers under ``execution``
    (:mod:`bastion.evaluation.executors`). Workers of another executor load the model
    themselves and evaluate it unaccelerated, so ``acceleration`` is refused with one.
    """
    if acceleration is not None and acceleration.names and not isinstance(executor, (LocalExecutor, type(None))):
        raise UsageError(f"--{acceleration.names[0]} applies to the local executor: other executors' workers load "
                         "the model themselves and evaluate it in fp32 eager")
    module = model.module
    device = model_device(module)
    num_classes = check_inputs(model, data, suite, build_attacks=False)
    x = data.x.to(device)
    prepared = prepare(module, x, acceleration, batch_size=batch_size)
    # The digest names the model, not how it is evaluated: an accelerated run resumes a plain one.
    inputs = BenchInputs(prepared.module, x, data.y.to(device), tuple(data.bounds), num_classes,
                         model_sha256=model_digest(module))
    out = Path(out_dir) if out_dir is not None else None
    execution = None
    if shard_size is None and executor is None:
        state = run_suite(inputs, suite, seed=seed, checkpoint=out / CHECKPOINT if out else None, resume=resume,
                          batch_size=batch_size, on_event=on_event)
    else:
        layout = ShardLayout.contiguous(len(data), shard_size or DEFAULT_SHARD_SIZE, seed)
        sharded = run_sharded(inputs, suite, layout, executor or LocalExecutor(), seed=seed, batch_size=batch_size,
                              checkpoint_dir=out / SHARD_CHECKPOINTS if out else None, resume=resume,
                              on_event=on_event)
        state, execution = sharded.state, sharded.record()
    run = {"model": {"name": model.name, "source": model.source, "sha256": inputs.model_sha256},
           "data": {"name": data.name, "n": len(data), "sha256": inputs.data_sha256},
           # Where the attacks ran: the executor's workers' device when it names one (Ray's may be GPUs).
           "device": (execution or {}).get("device", str(device)), "command": command,
           "evaluation": prepared.to_dict()}
    report = build_report(state, suite, data.y, num_classes, run=run)
    if execution is not None:
        report["execution"] = execution
    if out is not None:
        report["files"] = {k: p.name for k, p in write_report(report, out).items()}
    return report
