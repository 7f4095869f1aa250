"""The scores over a device mesh: ``jax.shard_map`` + ``lax.psum``, ragged ``n`` padded.

Multi-host runs call the same functions on global arrays from every process after
``jax.distributed.initialize()`` (see :func:`sharded_scores`).
"""

from leep_jax.sharding.mesh import axis_size, data_mesh
from leep_jax.sharding.padding import pad_to_multiple
from leep_jax.sharding.scores import METRICS, sharded_scores

__all__ = ["METRICS", "axis_size", "data_mesh", "pad_to_multiple", "sharded_scores"]
