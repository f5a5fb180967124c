"""Mesh construction and logical-axis sharding (the t5x / MaxText way).

Parameters and activations are annotated with logical axis names (`embed`, `heads`, ...). A list
of rules maps each logical name to mesh axes (`data`, `fsdp`, `tensor`); the same model code
then runs on 1 CPU device or a TPU pod. A dimension that a mesh axis does not divide stays
replicated along that axis rather than failing (e.g. the ViT MLP width 3420 on tensor=8).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
    ("patch", None),
    ("vision_tokens", None),
    ("cache_length", None),
    ("layers", None),             # the stacked axis of scanned decoder layers and their cache
)


def merge_rules(overrides: LogicalRules, base: LogicalRules = DEFAULT_RULES) -> tuple:
  """`base` with the logical axes that `overrides` names mapped anew (MaxText's
  `logical_axis_rules`, given per axis): e.g. (("mlp", ("fsdp", "tensor")),). Unknown logical
  axes or mesh axes are errors naming them."""
  known = [name for name, _ in base]
  merged = dict(base)
  for rule in overrides:
    if len(rule) != 2:
      raise ValueError(f"a rule is (logical axis, mesh axis or axes or None), not {rule!r}")
    name, target = rule
    if name not in merged:
      raise ValueError(f"unknown logical axis {name!r}; known: {known}")
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
      raise ValueError(f"logical axis {name!r}: unknown mesh axes {bad}; known: {list(MESH_AXES)}")
    merged[name] = target if isinstance(target, str) or target is None else tuple(target)
  return tuple((name, merged[name]) for name in known)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> dict[str, int]:
  """The {data, fsdp, tensor} sizes `make_mesh` builds on `num_devices` devices (one size may
  be -1: the remaining devices); ValueError when they do not fit."""
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError("at most one mesh axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices not divisible by the fixed mesh axes {sizes}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"have {num_devices}")
  return dict(zip(MESH_AXES, sizes))


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = list(mesh_shape(data, fsdp, tensor, len(devices)).values())
  dev = np.asarray(devices).reshape(sizes)
  return Mesh(dev, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_spec(logical_axes: Sequence[str | None], rules: LogicalRules,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> P:
  """Maps logical names to a PartitionSpec; with shape and mesh, drops axes that do not divide."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(logical_axes):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used and (mesh is None or a in mesh.shape))
    if shape is not None and mesh is not None:
      axes = _divisible_prefix(axes, shape[i], mesh)
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def _divisible_prefix(axes: tuple[str, ...], dim: int, mesh: Mesh) -> tuple[str, ...]:
  kept, size = [], 1
  for a in axes:
    if dim % (size * mesh.shape[a]) == 0:
      kept.append(a)
      size *= mesh.shape[a]
  return tuple(kept)


# -------------------------------------------------------------------------------------------------
# Activation constraints: active only inside `activation_sharding(mesh, rules)`.

_CONTEXT: contextvars.ContextVar[tuple[Mesh, LogicalRules] | None] = contextvars.ContextVar(
    "veripo_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: LogicalRules = DEFAULT_RULES) -> Iterator[None]:
  """Within this context, `constrain` pins activations to the mesh (trace-time setting)."""
  token = _CONTEXT.set(None if mesh is None else (mesh, tuple(rules)))
  try:
    yield
  finally:
    _CONTEXT.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  ctx = _CONTEXT.get()
  if ctx is None:
    return x
  mesh, rules = ctx
  spec = logical_to_spec(logical_axes, rules, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def is_logical_axes(x) -> bool:
  """A logical-axes tuple (a leaf of an axes tree such as `CausalLM.cache_axes()`)."""
  return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def constrain_tree(tree, axes_tree):
  """`constrain` on every array of `tree`, by the matching leaf of `axes_tree` (the same
  structure, logical-axes tuples at the leaves)."""
  return jax.tree.map(lambda axes, x: constrain(x, axes), axes_tree, tree,
                      is_leaf=is_logical_axes)


# -------------------------------------------------------------------------------------------------
# Parameters.

def param_sharding(variable: nnx.Variable, mesh: Mesh, rules: LogicalRules) -> NamedSharding:
  """The NamedSharding of one parameter from its `logical_axes` metadata (replicated if none)."""
  names = variable.get_metadata().get("logical_axes")
  shape = variable.get_value().shape
  if names is None:
    return NamedSharding(mesh, P())
  return NamedSharding(mesh, logical_to_spec(names, rules, shape, mesh))


def state_shardings(state: nnx.State, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
  """A pytree of NamedShardings matching `state` (a split NNX state, possibly abstract)."""
  return jax.tree.map(lambda v: v.replace(param_sharding(v, mesh, rules)), state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> nnx.Module:
  """Places every variable of `model` onto `mesh` by its logical axes (in place; returns model)."""
  graphdef, state = nnx.split(model)
  shardings = state_shardings(state, mesh, rules)
  state = jax.device_put(state, shardings)
  nnx.update(model, state)
  return model
