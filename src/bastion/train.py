"""``python -m bastion.train ARGS`` is ``bastion train ARGS``: the module torchrun starts once per rank.

    torchrun --nproc-per-node 2 -m bastion.train --recipe fast --out mnist-fast

Each process finds its rank in torchrun's environment, joins the gloo process group and trains its
shard (``bastion.defenses.training.distributed``); rank 0 writes the checkpoints and the bundle.
``bastion train --nproc 2 ...`` starts the same job without torchrun on the command line.
"""

from __future__ import annotations

import sys

from bastion.cli import main


def run() -> None:
    main(["train", *sys.argv[1:]], prog_name="bastion")


if __name__ == "__main__":
    run()
