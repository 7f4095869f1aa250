"""Which mesh and which of its axes the examples are split over."""

from __future__ import annotations

import math

import jax
from jax.sharding import AbstractMesh, AxisType, Mesh

AxisName = str | tuple[str, ...]


def axis_names_of(axis_name: AxisName) -> tuple[str, ...]:
    """``axis_name`` as a non-empty tuple of strings (one mesh axis or several)."""
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    if not names or not all(isinstance(name, str) for name in names):
        raise ValueError(
            f"axis_name must be a mesh axis name or a tuple of them, got {axis_name!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"axis_name repeats a mesh axis: {axis_name!r}")
    return names


def _context_mesh() -> Mesh | AbstractMesh:
    """The mesh set with ``jax.set_mesh`` (empty if none); inside ``jit`` its abstract form."""
    try:
        return jax.sharding.get_mesh()
    except ValueError:  # get_mesh refuses to run under a trace; shard_map takes either
        return jax.sharding.get_abstract_mesh()


def data_mesh(mesh: Mesh | AbstractMesh | None, axis_name: AxisName) -> Mesh | AbstractMesh:
    """The mesh to split examples over.

    Args:
      mesh: a ``jax.sharding.Mesh`` (Auto or Explicit axes; inside ``jit`` an
        ``AbstractMesh`` works too), or ``None`` for the mesh set with
        ``jax.set_mesh`` if there is one, else a 1-D mesh with Auto axis ``axis_name``
        over ``jax.devices()``: all devices of all processes, which on a single host
        are all local devices.
      axis_name: the mesh axis (or tuple of axes) the examples are split along; other
        mesh axes hold replicas.

    Raises:
      ValueError: if the mesh lacks one of the axes, or ``mesh`` is not a Mesh.
    """
    names = axis_names_of(axis_name)
    if mesh is None:
        mesh = _context_mesh()
        if mesh.empty:
            if len(names) != 1:
                raise ValueError(
                    f"axis_name {axis_name!r} names several axes: pass the mesh that has them"
                )
            return jax.make_mesh((jax.device_count(),), names, axis_types=(AxisType.Auto,))
    if not isinstance(mesh, (Mesh, AbstractMesh)):
        raise ValueError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}")
    missing = [name for name in names if name not in mesh.axis_names]
    if missing:
        raise ValueError(
            f"mesh axes {mesh.axis_names} lack axis_name {missing[0]!r}; pass "
            "axis_name= one of them (the axis the examples are split over)"
        )
    return mesh


def axis_size(mesh: Mesh | AbstractMesh, axis_name: AxisName) -> int:
    """How many shards the examples are split into: the product of the axis sizes."""
    return math.prod(mesh.shape[name] for name in axis_names_of(axis_name))
