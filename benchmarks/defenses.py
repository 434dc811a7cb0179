"""Sanitisers and randomized-smoothing certification: bastion against ART, side by side.

    python benchmarks/defenses.py [--n 20] [--samples 1000] [--repeats 3] [--images 1000]

1. Certification (Cohen et al. CERTIFY) of the zoo's mnist-cnn-gaussian at sigma 0.25 on
   the first --n test images: bastion.defenses.smoothing.certify vs ART's
   PyTorchRandomizedSmoothing.certify, same n0, samples, alpha, batch size. Times (median of
   interleaved repeats), certified accuracy at a few radii, mean radius.
2. Sanitiser transforms on --images test images: bit depth 1, median 3x3, JPEG 75 vs ART's
   FeatureSqueezing, SpatialSmoothing, JpegCompression. Times and output agreement.

ART's certify computes its Clopper-Pearson bound with statsmodels, which is not a bastion
dependency; the benchmark gives ART the identical bound from scipy (beta.ppf(alpha, k, n-k+1),
what statsmodels' "beta" method computes), which costs microseconds either way.
Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from bastion.data import load_data
from bastion.defenses.smoothing import certify
from bastion.defenses.transforms import JPEG, BitDepth, MedianSmooth
from bastion.models import load_model

SIGMA, ALPHA, N0 = 0.25, 0.001, 100
RADII = (0.0, 0.25, 0.5)


def art_smoother(model, samples_batch: int):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    from scipy.stats import beta

    smoother = PyTorchRandomizedSmoothing(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                          nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu",
                                          sample_size=N0, scale=SIGMA, alpha=ALPHA)
    smoother._lower_confidence_bound = lambda k, n: 0.0 if k == 0 else float(beta.ppf(ALPHA, k, n - k + 1))
    return smoother


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def certified_accuracy(prediction, radius, y):
    correct = prediction == y
    return [float(np.mean(correct & (radius >= r))) for r in RADII]


def bench_certify(args, model, data):
    x, y = data.x, data.y.numpy()
    smoother = art_smoother(model, args.batch)
    times = {"bastion": [], "art": []}
    results = {}
    for repeat in range(args.repeats):
        t, cert = timed(lambda: certify(model, x, sigma=SIGMA, n0=N0, samples=args.samples, alpha=ALPHA,
                                        num_classes=10, batch_size=args.batch, seed=repeat))
        times["bastion"].append(t)
        results["bastion"] = (cert.prediction.numpy(), cert.radius.numpy())
        np.random.seed(repeat)
        t, (pred, radius) = timed(lambda: smoother.certify(x.numpy(), n=args.samples, batch_size=args.batch))
        times["art"].append(t)
        results["art"] = (pred, radius)
    rows = {}
    for tool in ("bastion", "art"):
        pred, radius = results[tool]
        rows[tool] = {"seconds": statistics.median(times[tool]), "certified_accuracy": certified_accuracy(pred, radius, y),
                      "mean_radius": float(radius.mean()), "abstained": int((pred == -1).sum())}
    return rows


def bench_transforms(args, data):
    from art.defences.preprocessor import FeatureSqueezing, JpegCompression, SpatialSmoothing

    x = data.x
    pairs = {
        "bit-depth 1": (lambda: BitDepth(1).apply(x, (0.0, 1.0)).numpy(),
                        lambda: FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=1)(x.numpy())[0]),
        "median 3x3": (lambda: MedianSmooth(3).apply(x, (0.0, 1.0)).numpy(),
                       lambda: SpatialSmoothing(window_size=3, channels_first=True)(x.numpy())[0]),
        "jpeg 75": (lambda: JPEG(75).apply(x, (0.0, 1.0)).numpy(),
                    lambda: JpegCompression(clip_values=(0.0, 1.0), quality=75, channels_first=True)(x.numpy())[0]),
    }
    rows = {}
    for name, (ours, theirs) in pairs.items():
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            t, a = timed(ours)
            t_ours.append(t)
            t, b = timed(theirs)
            t_theirs.append(t)
        interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # edge padding conventions differ
        rows[name] = {"bastion_s": statistics.median(t_ours), "art_s": statistics.median(t_theirs),
                      "max_abs_diff_interior": float(np.abs(a[interior] - b[interior]).max()),
                      "equal_fraction": float(np.mean(np.isclose(a, b, atol=1e-6)))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="test images to certify")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--images", type=int, default=1000, help="test images to sanitise")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model("mnist-cnn-gaussian").module
    test = load_data("mnist", "test")
    cert = bench_certify(args, model, test.take(args.n))
    transforms = bench_transforms(args, test.take(args.images))

    print(f"CERTIFY sigma {SIGMA}, {args.n} images, n0 {N0}, {args.samples} samples, alpha {ALPHA} "
          f"(median of {args.repeats})")
    print(f"{'tool':<9} {'seconds':>8} {'mean radius':>12} {'abstain':>8}  certified accuracy at r = {RADII}")
    for tool, row in cert.items():
        accuracy = " ".join(f"{a:.2f}" for a in row["certified_accuracy"])
        print(f"{tool:<9} {row['seconds']:>8.2f} {row['mean_radius']:>12.3f} {row['abstained']:>8}  {accuracy}")
    print(f"\nSANITISERS on {args.images} images (median of {args.repeats})")
    print(f"{'transform':<12} {'bastion s':>10} {'ART s':>8} {'ratio':>6} {'equal':>6} {'max diff (interior)':>20}")
    for name, row in transforms.items():
        print(f"{name:<12} {row['bastion_s']:>10.3f} {row['art_s']:>8.3f} {row['bastion_s'] / row['art_s']:>6.2f} "
              f"{row['equal_fraction']:>6.3f} {row['max_abs_diff_interior']:>20.4f}")
    summary = {
        "benchmark": "defenses", "certify_time_ratio_bastion_over_art": cert["bastion"]["seconds"] / cert["art"]["seconds"],
        "certify": cert,
        "sanitize_time_ratio_bastion_over_art": {k: v["bastion_s"] / v["art_s"] for k, v in transforms.items()},
        "sanitize": transforms,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
