"""Train a base model for randomized smoothing from a Gaussian-augmentation recipe.

    python scripts/train_gaussian.py --recipe gaussian-0.25 --out src/bastion/models/zoo/mnist-cnn-gaussian

Deterministic (the recipe's seed, one thread). About a minute on 2 cores for 15 epochs.
The bundle records the recipe, the training time and the test accuracy under noise;
certify it with `bastion certify --model BUNDLE --sigma 0.25`.
"""

from __future__ import annotations

import argparse

import torch

from bastion.data import load_data
from bastion.defenses.noise_training import load_noise_recipe, noisy_accuracy, train_with_noise
from bastion.models.bundle import BundleMeta, save_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="gaussian-0.25", help="recipe name or path")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    parser.add_argument("--name", default="mnist-cnn-gaussian")
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = load_noise_recipe(args.recipe)
    train, test = load_data(recipe.dataset, "train"), load_data(recipe.dataset, "test")

    def progress(epoch: int, epochs: int, loss: float) -> None:
        print(f"epoch {epoch}/{epochs}: loss {loss:.3f}", flush=True)

    model, metrics = train_with_noise(recipe, train, epochs=args.epochs, progress=progress)
    with torch.no_grad():
        metrics["test_accuracy"] = round((model(test.x).argmax(1) == test.y).float().mean().item(), 4)
    metrics["test_accuracy_under_noise"] = round(noisy_accuracy(model, test, recipe.sigma), 4)
    meta = BundleMeta(name=args.name, architecture=recipe.architecture, input_shape=list(train.input_shape),
                      num_classes=train.num_classes, bounds=list(train.bounds),
                      training={"script": "scripts/train_gaussian.py", "recipe": recipe.name, "method": "gaussian",
                                "settings": recipe.to_dict(), "metrics": metrics})
    save_bundle(model, args.out, meta)
    print(f"test accuracy {metrics['test_accuracy']:.2%} clean, {metrics['test_accuracy_under_noise']:.2%} "
          f"under noise sigma {recipe.sigma}; {metrics['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
