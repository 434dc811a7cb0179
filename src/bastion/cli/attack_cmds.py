"""`bastion models` and `bastion attack`."""

from __future__ import annotations

import click

from bastion.cli import main
from bastion.cli.common import (choose_samples, data_option, device_option, emit_json, json_option, model_option,
                                pick_device, seed_option, weights_option)
from bastion.errors import UsageError

#: Test samples `bastion attack` attacks without --n.
DEFAULT_N = 1000


@main.command()
@json_option
def models(as_json: bool) -> None:
    """List the bundled model zoo, and what else a model reference may be."""
    from bastion.models.onnx_support import describe
    from bastion.models.zoo import zoo_entries, zoo_path

    rows = [{"name": n, "description": d, "available": ok, "path": str(zoo_path(n))} for n, d, ok in zoo_entries()]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        mark = "" if row["available"] else "  (weights not installed)"
        click.echo(f"{row['name']:<18} {row['description']}{mark}")
    click.echo("\nA model may also be a bundle directory, a torch.export .pt2 file, package.module:factory with "
               "--weights, or:")
    for line in describe():
        click.echo(line)


#: The parameter names of :func:`acceleration_options` (options that apply to a run, not to --compare).
ACCELERATION_PARAMS = ("use_compile", "channels_last", "bf16", "onnx_runtime")


def acceleration_options(command):
    """--compile, --channels-last, --bf16 and --onnx-runtime, for the commands that attack a model."""
    options = [
        click.option("--compile", "use_compile", is_flag=True,
                     help="torch.compile the model for the attack loops (on a CPU: needs a C++ compiler; the "
                          "first batches wait for compilation)."),
        click.option("--channels-last", is_flag=True, help="Channels-last memory format for 4-D inputs."),
        click.option("--bf16", is_flag=True, help="bfloat16 autocast where the device supports it."),
        click.option("--onnx-runtime", is_flag=True,
                     help="Run an ONNX model on onnxruntime (forward only: gradient attacks fail, the gradient "
                          "indicators say so). Forward-only attacks and suites use it anyway."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def acceleration_from(use_compile: bool, channels_last: bool, bf16: bool):
    """The :class:`~bastion.models.acceleration.Acceleration` the flags ask for. Each is checked on the
    evaluated samples before use (predictions agree with fp32 eager on 99.9%), else the command
    refuses with one line; every adversarial is re-checked in fp32 eager."""
    from bastion.models.acceleration import Acceleration

    return Acceleration(compile=use_compile, channels_last=channels_last, bf16=bf16)


def check_onnx_runtime(asked: bool, loaded) -> None:
    if asked and loaded.format != "onnx-runtime":
        raise UsageError(f"--onnx-runtime: {loaded.source or loaded.name} is not an ONNX model (an .onnx file or a "
                         "bundle of format onnx)")


def parse_params(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; values parse as JSON where they can (numbers, booleans, lists), else as strings."""
    import json

    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
        except (ValueError, RecursionError):  # a number of thousands of digits, lists nested thousands deep
            raise UsageError(f"--param {key.strip()}: not a value bastion takes (too long or too deeply nested)") \
                from None
    return params


def parse_eps(values: tuple[str, ...]) -> list[float]:
    eps = []
    for value in values:
        for part in value.split(","):
            try:
                eps.append(float(part))
            except ValueError:
                raise UsageError(f"--eps {value!r}: not a number (give e.g. --eps 0.3 or --eps 0.1,0.2,0.3)") from None
    return eps


class _AttackNameOption(click.Option):
    """--attack, whose help lists the registry's names: looked up only when help is shown, so that
    parsing the command line needs no torch."""

    def get_help_record(self, ctx):
        from bastion.attacks import ATTACKS

        self.help = f"Attack name: {', '.join(sorted(ATTACKS))} (art runs an ART class: -p attack=HopSkipJump)."
        return super().get_help_record(ctx)


@main.command()
@click.option("--attack", "-a", "attack_name", cls=_AttackNameOption, required=True, help="Attack name.")
@click.option("--eps", "-e", multiple=True, required=True, help="Perturbation budget; repeat or comma-separate for a sweep.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@model_option
@weights_option
@data_option
@click.option("--n", "n", type=int, default=None,
              help=f"Number of test samples: exactly this many (refused if the data holds fewer). "
                   f"[default: {DEFAULT_N:,}, or all if the data holds fewer]")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="Attack parameter, e.g. -p steps=100 (repeatable).")
@click.option("--batch-size", type=int, default=None,
              help="Samples per attack batch. [default: 256 on a CPU, 1000 on a GPU]")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write adversarial examples to this .npz file.")
@click.option("--trust-code", is_flag=True, help="Allow a bundle's architecture to import Python code.")
@acceleration_options
@device_option
@seed_option
@json_option
def attack(attack_name, eps, norm, model_ref, weights, data_ref, n, params, batch_size, out, trust_code, use_compile,
           channels_last, bf16, onnx_runtime, device, seed, as_json):
    """Run one attack and report clean and robust accuracy.

    Example: bastion attack --attack pgd --eps 0.3 --model mnist-cnn --data mnist -p steps=100

    Minimum-norm attacks (cw-l2, deepfool, fab-t) with a large eps report their
    smallest perturbations; every attack's output is projected into the eps ball.
    Every adversarial is re-checked (inside the ball and the bounds, misclassified by
    the model in fp32 eager) before it counts.
    """
    from bastion.attacks import get_attack
    from bastion.data import load_data
    from bastion.evaluation.report_format import fraction
    from bastion.evaluation.runner import confirmed_robust
    from bastion.fsutil import atomic_write_bytes, check_output_file
    from bastion.models import load_model
    from bastion.models.fit import check_fit
    from bastion.models.preparation import prepare
    from bastion.threat import ThreatModel

    if out is not None:
        if not out.endswith(".npz"):
            raise UsageError(f"--out {out}: the output must be a .npz file")
        check_output_file(out, "--out file")
    dev = pick_device(device)
    attack_cls = get_attack(attack_name)
    attack_params = parse_params(params)
    for key, option in (("seed", "--seed"), ("batch_size", "--batch-size")):
        if key in attack_params:
            raise UsageError(f"--param {key}: set it with {option}")
    problem = attack_cls.PARAMS.find_problem(attack_params)
    if problem:
        raise UsageError("--param: " + problem.after(attack_name))
    epsilons = parse_eps(eps)
    # An attack that needs no gradient runs an ONNX model on onnxruntime itself.
    forward_only = attack_cls(ThreatModel(norm=norm, eps=epsilons), **attack_params).family != "white-box"
    loaded = load_model(model_ref, weights=weights, device=dev, trust_code=trust_code,
                        onnx_runtime=onnx_runtime or forward_only)
    check_onnx_runtime(onnx_runtime, loaded)
    data = choose_samples(load_data(data_ref, "test", bounds=loaded.bounds), n, DEFAULT_N)
    check_fit(loaded, data)
    threat = ThreatModel(norm=norm, eps=epsilons, bounds=data.bounds)
    threat.check_sample_shape(data.input_shape)
    attack_obj = attack_cls(threat, batch_size=batch_size, seed=seed, **attack_params)
    x, y = data.x.to(dev), data.y.to(dev)
    prepared = prepare(loaded.module, x, acceleration_from(use_compile, channels_last, bf16), batch_size=batch_size)
    results = attack_obj.run(prepared.module, x, y)
    rechecked = [confirmed_robust(prepared.module, threat, x, y, r, batch_size) for r in results]

    summary = {
        "attack": attack_name, "params": attack_obj.params(), "model": loaded.source or loaded.name,
        "data": data.name, "n": len(data), "norm": norm,
        "clean_accuracy": fraction(rechecked[0].clean_correct.float().mean().item()),
        "results": [{"eps": r.eps, "robust_accuracy": fraction(c.robust.float().mean().item()), "unconfirmed": c.unconfirmed,
                     "seconds": round(r.seconds, 3)} for r, c in zip(results, rechecked)],
        "runtime": "onnxruntime" if loaded.format == "onnx-runtime" else "torch",
        **prepared.to_dict(),
    }
    if out:
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez_compressed(buffer, x_adv=results[-1].x_adv.cpu().numpy(), y=data.y.numpy(),
                            robust=np.stack([c.robust.cpu().numpy() for c in rechecked]),
                            eps=np.array([r.eps for r in results]))
        atomic_write_bytes(out, buffer.getvalue())
        summary["out"] = out
    if as_json:
        emit_json(summary)
        return
    on = f" on {summary['runtime']}" if summary["runtime"] != "torch" else ""
    click.echo(f"{attack_name} ({norm}) on {summary['model']}{on}, {len(data)} samples of {data.name}")
    if prepared.accelerations:
        click.echo(f"  accelerations    {', '.join(prepared.accelerations)} (agree with fp32 eager; adversarials "
                   "re-checked in fp32 eager)")
    click.echo(f"  clean accuracy   {summary['clean_accuracy']:.2%}")
    for r in summary["results"]:
        unconfirmed = f", {r['unconfirmed']} claims did not re-check" if r["unconfirmed"] else ""
        click.echo(f"  eps {r['eps']:<8g} robust accuracy {r['robust_accuracy']:.2%}   ({r['seconds']:.1f} s"
                   f"{unconfirmed})")
    if out:
        click.echo(f"  adversarial examples (largest eps) written to {out}")
