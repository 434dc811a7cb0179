"""Train the zoo's standard model `mnist-cnn` on the bundled 4,000-image train split.

    python scripts/train_zoo.py [--out src/bastion/models/zoo/mnist-cnn]

Deterministic (seed 0, one thread): rerunning reproduces the weights. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bastion.data import load_data
from bastion.models.architectures import mnist_cnn
from bastion.models.bundle import BundleMeta, save_bundle
from bastion.models.zoo import zoo_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(zoo_path("mnist-cnn")))
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, test = load_data("mnist", "train"), load_data("mnist", "test")
    model = mnist_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs * 32)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train))
        for batch in order.split(128):
            x, y = train.x[batch], train.y[batch]
            shift = torch.randint(-2, 3, (2,)).tolist()  # random 2-pixel translation
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(test.x).argmax(1) == test.y).float().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, test accuracy {acc:.3f}")
    meta = BundleMeta(name="mnist-cnn", architecture="mnist-cnn", input_shape=[1, 28, 28], num_classes=10,
                      training={"script": "scripts/train_zoo.py", "epochs": args.epochs, "seed": 0,
                                "test_accuracy": round(acc, 4), "seconds": round(time.time() - start, 1)})
    save_bundle(model, args.out, meta)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
