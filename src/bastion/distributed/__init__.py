"""Scale-out on engines users already run: benchmark shards on Ray.

Owns: :class:`ModelSource` (how every process of a run resolves, and where asked verifies, the
same model) and :class:`RayExecutor` (shards of a benchmark on a Ray cluster, one actor per
worker). The sharding itself (layout, per-shard seeds, checkpoints, the merge into one run
state, the indicators on the merged run) belongs to :mod:`bastion.evaluation.executors`; this
package only decides where shards run. May import the bottom layer, ``models``, ``attacks``,
``evaluation``, ``defenses`` and ``access``. Ray is an optional extra, imported only inside
:mod:`~bastion.distributed.ray_executor`'s functions.
"""

from bastion.distributed.ray_executor import RayExecutor, import_ray, local_cluster
from bastion.distributed.source import ModelSource

__all__ = ["ModelSource", "RayExecutor", "import_ray", "local_cluster"]
