"""`bastion sanitize`, `bastion detect` and `bastion certify`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bastion.cli import main
from bastion.cli.common import (choose_samples, data_option, device_option, emit_json, json_option, model_option,
                                pick_device, quiet_option, seed_option, weights_option)
from bastion.cli.progress import Progress
from bastion.errors import UsageError

#: Held-out samples `bastion detect` measures on without --n; samples `bastion certify` certifies without --n.
DETECT_N = 500
CERTIFY_N = 100


@main.command()
@click.option("--recipe", "-r", required=True, help="Sanitize recipe: a name (sanitize-bitdepth) or a .toml path.")
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False),
              help="A .npz file with 'x' (floats, batch first); other arrays such as 'y' are copied.")
@click.option("--model", "-m", "model_ref",
              help="Instead of --input: a zoo model or bundle to wrap; --out is then a bundle directory.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output .npz (with --input) or bundle directory.")
@device_option
@seed_option
@json_option
def sanitize(recipe, input_path, model_ref, out, device, seed, as_json):
    """Validate and sanitise inputs with a recipe, or wrap a model in one.

    \b
    bastion sanitize --recipe sanitize-bitdepth --input x.npz --out x_clean.npz
    bastion sanitize --recipe sanitize-bitdepth --model mnist-cnn --out mnist-cnn-bitdepth/
    The wrapped bundle is a model like any other: `bastion attack --model mnist-cnn-bitdepth/ ...`
    attacks it adaptively (BPDA through non-differentiable steps, EOT over random ones).
    """
    from bastion.defenses.sanitizer import load_sanitizer

    from bastion.fsutil import check_output_dir, check_output_file

    if (input_path is None) == (model_ref is None):
        raise UsageError("give exactly one of --input X.npz (sanitise data) or --model M (wrap a model)")
    sanitizer = load_sanitizer(recipe)
    if model_ref is not None:
        check_output_dir(out, "bundle folder")
        _sanitize_model(sanitizer, model_ref, out, pick_device(device), as_json)
        return
    if not out.endswith(".npz"):
        raise UsageError(f"--out {out}: the output must be a .npz file")
    check_output_file(out, "--out file")
    _sanitize_data(sanitizer, Path(input_path), out, seed, as_json)


def _sanitize_data(sanitizer, input_path: Path, out: str, seed: int, as_json: bool) -> None:
    import dataclasses
    import io

    import numpy as np
    import torch

    from bastion.data import read_npz
    from bastion.fsutil import atomic_write_bytes

    arrays = read_npz(input_path, required=("x",))
    clean, stats = sanitizer.sanitize_with_stats(torch.from_numpy(arrays["x"]),
                                                 generator=torch.Generator().manual_seed(seed))
    arrays["x"] = clean.numpy().astype(np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(out, buffer.getvalue())
    summary = {"recipe": sanitizer.name, "input": str(input_path), "out": out, **dataclasses.asdict(stats),
               "transforms": [t.describe() for t in sanitizer.transforms]}
    if as_json:
        emit_json(summary)
        return
    steps = ", ".join(t.label() for t in sanitizer.transforms) or "no transforms"
    click.echo(f"sanitised {stats.samples} samples with {sanitizer.name} ({steps}) -> {out}")
    click.echo(f"  validation: {stats.nonfinite_values_replaced} NaN/Inf value(s) replaced, "
               f"{stats.out_of_range_values_clamped} out-of-range value(s) clamped")
    click.echo(f"  mean absolute change per value {stats.mean_abs_change:.4f}")


def _sanitize_model(sanitizer, model_ref: str, out: str, device, as_json: bool) -> None:
    from bastion.defenses.sanitizer import save_sanitized_bundle
    from bastion.models import load_model

    loaded = load_model(model_ref, device=device)
    path = save_sanitized_bundle(loaded, sanitizer, out)
    summary = {"recipe": sanitizer.name, "model": loaded.source or model_ref, "bundle": str(path),
               "adaptive_evaluation": sanitizer.adaptive_evaluation()}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"wrote sanitised model bundle {path} ({loaded.source or model_ref} behind {sanitizer.name})")
    click.echo(f"  attacks evaluate it with {', '.join(summary['adaptive_evaluation'])}")
    click.echo(f"  try: bastion attack --model {path} --attack pgd --eps 0.3 --n 200")


@main.command()
@model_option
@weights_option
@data_option
@click.option("--fpr", type=float, default=0.05, show_default=True, help="Target false-positive rate on clean data.")
@click.option("--calib-n", type=int, default=500, show_default=True,
              help="Clean samples (the first ones of --data) used to calibrate the threshold.")
@click.option("--n", "n", type=int, default=None,
              help=f"Held-out samples (after the calibration ones) to measure FPR and detection on: exactly this "
                   f"many (refused if the data holds fewer). [default: {DETECT_N}, or all that remain if fewer]")
@click.option("--bits", type=int, default=1, show_default=True, help="Bit-depth squeezer's bits.")
@click.option("--median", type=int, default=2, show_default=True, help="Median squeezer's window size.")
@click.option("--attack", "-a", "attack_name", help="Attack whose examples to detect (e.g. pgd).")
@click.option("--eps", "-e", type=float, help="Attack budget (with --attack).")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--adaptive-steps", type=int, default=100, show_default=True,
              help="PGD steps of the detector-aware (adaptive) attack.")
@click.option("--trust-code", is_flag=True, help="Allow a bundle's architecture to import Python code.")
@device_option
@seed_option
@json_option
def detect(model_ref, weights, data_ref, fpr, calib_n, n, bits, median, attack_name, eps, norm, adaptive_steps,
           trust_code, device, seed, as_json):
    """Feature-squeezing detector: calibrate on clean data, then measure detection and evasion.

    \b
    bastion detect --model mnist-cnn --fpr 0.05 --attack pgd --eps 0.3 --n 200
    """
    from bastion.attacks import get_attack
    from bastion.data import load_data
    from bastion.defenses.detection import FeatureSqueezingDetector, evaluate_detector
    from bastion.defenses.transforms import BitDepth, MedianSmooth
    from bastion.models import load_model
    from bastion.models.fit import check_fit
    from bastion.threat import ThreatModel

    if calib_n < 2:
        raise UsageError("--calib-n must be >= 2")
    if n is not None and n < 1:
        raise UsageError("--n must be >= 1")
    if (attack_name is None) != (eps is None):
        raise UsageError("--attack and --eps go together")
    squeezers = [BitDepth(bits), MedianSmooth(median)]
    dev = pick_device(device)
    loaded = load_model(model_ref, weights=weights, device=dev, trust_code=trust_code)
    data = load_data(data_ref, "test", bounds=loaded.bounds)
    if len(data) <= calib_n:
        raise UsageError(f"{data.name} has {len(data)} samples: need more than --calib-n {calib_n} "
                         "(the rest are the held-out set)")
    if n is not None and calib_n + n > len(data):
        raise UsageError(f"--n: {data.name} holds {len(data):,} samples, {len(data) - calib_n:,} after the "
                         f"--calib-n {calib_n:,}: fewer than the {n:,} asked for")
    data = data.take(calib_n + (n if n is not None else DETECT_N))
    check_fit(loaded, data)
    x, y = data.x.to(dev), data.y.to(dev)
    held_x, held_y = x[calib_n:], y[calib_n:]
    attack = None
    if attack_name is not None:
        threat = ThreatModel(norm=norm, eps=eps, bounds=data.bounds)
        threat.check_sample_shape(data.input_shape)
        attack = get_attack(attack_name)(threat, seed=seed)
    detector = FeatureSqueezingDetector(loaded.module, squeezers, bounds=data.bounds)
    detector.calibrate(x[:calib_n], fpr)
    report = evaluate_detector(detector, held_x, held_y, attack=attack, adaptive_steps=adaptive_steps, seed=seed)
    summary = {"model": loaded.source or loaded.name, "data": data.name, "calibration_samples": calib_n,
               "squeezers": [s.describe() for s in squeezers], **report.to_dict()}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"feature-squeezing detector ({', '.join(s.label() for s in squeezers)}) on {summary['model']}")
    click.echo(f"  threshold {report.threshold:.4f}: calibrated on {calib_n} clean samples of {data.name} "
               f"for a {fpr:.1%} false-positive rate")
    click.echo(f"  held-out clean samples flagged: {report.clean_fpr:.1%} of {report.n_clean} (target {fpr:.1%})")
    if attack is not None and not report.n_attacked:
        click.echo(f"  {attack_name} {norm} eps {eps:g}: not run, the model classifies none of the "
                   f"{report.n_clean} held-out samples correctly")
    elif attack is not None:
        click.echo(f"  {attack_name} {norm} eps {eps:g} on {report.n_attacked} correctly classified samples:")
        click.echo(f"    attack success {report.attack_success:.1%}; detected {report.detection_rate:.1%} "
                   f"of its adversarial examples; undetected successes {report.undetected_success:.1%}")
        click.echo(f"    adaptive attack (also minimises the detector score, BPDA through the squeezers): "
                   f"undetected successes {report.adaptive_undetected_success:.1%}")
        click.echo("  The adaptive figure is the one to trust: it is what an attacker who knows the detector gets.")


@main.command()
@click.option("--model", "-m", "model_ref", default="mnist-cnn-gaussian", show_default=True,
              help="Base model (ideally trained with Gaussian noise at --sigma): zoo name, bundle, .pt2, ...")
@weights_option
@data_option
@click.option("--n", "n", type=int, default=None,
              help=f"Number of test samples to certify: exactly this many (refused if the data holds fewer). "
                   f"[default: {CERTIFY_N}, or all if the data holds fewer]")
@click.option("--sigma", type=float, required=True, help="Noise standard deviation (L2 smoothing).")
@click.option("--n0", type=int, default=100, show_default=True, help="Noise samples to pick the top class.")
@click.option("--samples", type=int, default=1000, show_default=True,
              help="Noise samples to bound the top class's probability.")
@click.option("--alpha", type=float, default=0.001, show_default=True,
              help="Failure probability of each certificate.")
@click.option("--batch-size", type=int, default=1000, show_default=True)
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Write certify.json and certified_accuracy.png to this directory.")
@click.option("--trust-code", is_flag=True, help="Allow a bundle's architecture to import Python code.")
@device_option
@seed_option
@quiet_option
@json_option
def certify(model_ref, weights, data_ref, n, sigma, n0, samples, alpha, batch_size, out, trust_code, device, seed,
            quiet, as_json):
    """Randomized smoothing: certified L2 radius per sample, with abstention (Cohen et al. 2019).

    \b
    bastion certify --model mnist-cnn-gaussian --sigma 0.25 --n 100 --out cert/
    """
    from bastion.data import load_data
    from bastion.defenses.smoothing import certify as run_certify
    from bastion.defenses.smoothing import check_settings, write_certified_plot
    from bastion.fsutil import atomic_write_text, check_output_dir
    from bastion.models import load_model
    from bastion.models.fit import check_fit

    if out:
        check_output_dir(out, "--out folder")
    dev = pick_device(device)
    loaded = load_model(model_ref, weights=weights, device=dev, trust_code=trust_code)
    data = choose_samples(load_data(data_ref, "test", bounds=loaded.bounds), n, CERTIFY_N)
    num_classes = check_fit(loaded, data)
    check_settings(sigma=sigma, n0=n0, samples=samples, alpha=alpha, batch_size=batch_size, bounds=data.bounds)
    with Progress(enabled=not (quiet or as_json)) as progress:
        progress.start("certifying", total=len(data))
        cert = run_certify(loaded.module, data.x, sigma=sigma, n0=n0, samples=samples, alpha=alpha,
                           num_classes=num_classes, batch_size=batch_size, seed=seed, bounds=data.bounds,
                           progress=progress.advance)
    summary = {"model": loaded.source or loaded.name, "data": data.name, "seed": seed, **cert.summary(data.y)}
    if out:
        out_dir = Path(out)
        atomic_write_text(out_dir / "certify.json", json.dumps(summary, indent=2) + "\n")
        write_certified_plot(out_dir / "certified_accuracy.png", cert.radius, cert.correct(data.y), sigma,
                             f"{summary['model']}, sigma {sigma:g}, {len(data)} samples")
        summary["out"] = str(out_dir)
    if as_json:
        emit_json(summary)
        return
    click.echo(f"randomized smoothing on {summary['model']}: {len(data)} samples of {data.name}, sigma {sigma:g}, "
               f"n0 {n0}, {samples} noise samples, alpha {alpha:g}")
    click.echo(f"  smoothed accuracy {summary['smoothed_accuracy']:.1%}  (abstained {summary['abstained']}, "
               f"wrong {summary['wrong']})")
    click.echo(f"  median certified L2 radius of correct samples {summary['median_radius_correct']:.3f}")
    click.echo("  L2 radius  certified accuracy")
    for row in summary["certified_accuracy"]:
        click.echo(f"  {row['radius']:<9g}  {row['certified_accuracy']:.1%}")
    click.echo(f"  (with {samples} samples no radius can exceed {summary['max_certifiable_radius']:.3f}; "
               "raise --samples to certify more)")
    click.echo(f"  certified accuracy at r: right, and provably right for every L2 perturbation < r, "
               f"each certificate wrong with probability <= {alpha:g}")
    if out:
        click.echo(f"  wrote {out}/certify.json and {out}/certified_accuracy.png")
