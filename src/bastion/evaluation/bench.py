"""One call for a whole benchmark: run the suite (resumable), build the report, write it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.attacks.base import model_device
from bastion.data import Dataset
from bastion.errors import DataError
from bastion.evaluation.report import build_report, write_report
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.runner import EventHook, run_suite
from bastion.evaluation.state import model_digest
from bastion.evaluation.suite import Suite
from bastion.models.acceleration import Acceleration
from bastion.models.loaded import LoadedModel
from bastion.models.preparation import prepare

CHECKPOINT = "checkpoint.json"


def benchmark(model: LoadedModel, data: Dataset, suite: Suite, *, out_dir: str | Path | None = None,
              seed: int = 0, resume: bool = False, batch_size: int | None = None,
              on_event: EventHook | None = None, command: str = "",
              acceleration: Acceleration | None = None) -> dict[str, Any]:
    """Run ``suite`` on ``model`` over ``data`` and return the report.

    With ``out_dir`` the run checkpoints to ``out_dir/checkpoint.json`` after every
    attack (``resume=True`` continues from it) and writes report.json, report.md and
    the plots there when it finishes. The model is checked on the samples first
    (:func:`bastion.models.preparation.prepare`: an ONNX conversion against onnxruntime,
    ``acceleration`` against fp32 eager); the report's ``evaluation`` says what passed.
    """
    module = model.module
    device = model_device(module)
    if model.input_shape and tuple(data.input_shape) != tuple(model.input_shape):
        raise DataError(f"{data.name}: samples have shape {data.input_shape}, the model expects "
                        f"{tuple(model.input_shape)}")
    num_classes = model.num_classes or data.num_classes
    x = data.x.to(device)
    prepared = prepare(module, x, acceleration, batch_size=batch_size)
    # The digest names the model, not how it is evaluated: an accelerated run resumes a plain one.
    inputs = BenchInputs(prepared.module, x, data.y.to(device), tuple(data.bounds), num_classes,
                         model_sha256=model_digest(module))
    out = Path(out_dir) if out_dir is not None else None
    state = run_suite(inputs, suite, seed=seed, checkpoint=out / CHECKPOINT if out else None, resume=resume,
                      batch_size=batch_size, on_event=on_event)
    run = {"model": {"name": model.name, "source": model.source, "sha256": inputs.model_sha256},
           "data": {"name": data.name, "n": len(data), "sha256": inputs.data_sha256},
           "device": str(device), "command": command, "evaluation": prepared.to_dict()}
    report = build_report(state, suite, data.y, num_classes, run=run)
    if out is not None:
        report["files"] = {k: p.name for k, p in write_report(report, out).items()}
    return report
