"""The train step shared by SFT, GRPO and DPO: exact gradient accumulation + one optimizer update.

A `Learner` owns the trainable parameters, the frozen ones (the vision tower by default) and the
optimizer state, all placed on the mesh by their logical axes. A stage supplies a loss function
`loss_fn(model, batch) -> LossTerms` (a hashable callable: it is a static jit argument) and
micro-batches; `accumulate` adds gradient *sums* and loss weights, `apply` divides once and
updates. Both are jitted with explicit shardings and donate the buffers they replace.

A learner built from an abstract model (`nnx.eval_shape`: parameters are `ShapeDtypeStruct`s)
is the same learner without buffers: the same shardings, its state and batches placed as
`ShapeDtypeStruct`s carrying them, and every step returning the shapes of its result
(`jax.eval_shape`) instead of running. Each step's `*_call` method gives the jitted function
and its arguments, which run the step (`fn(*args)`) or compile it ahead of time
(`fn.lower(*args).compile()`, `veripo_jax.compile_check`).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from veripo_jax.parallel.sharding import (DEFAULT_RULES, LogicalRules, activation_sharding,
                                          param_sharding)
from veripo_jax.train.loss_terms import LossTerms
from veripo_jax.train.optimizer import OptimizerConfig, make_optimizer

LossFn = Callable[[nnx.Module, Any], LossTerms]


@struct.dataclass
class TrainState:
  step: jax.Array             # () int32 optimizer steps taken
  params: nnx.State           # trainable parameters (fp32 masters)
  opt_state: Any


@struct.dataclass
class Accumulator:
  grads: nnx.State            # sums of d loss_sum / d params over micro-batches
  loss_sum: jax.Array
  weight: jax.Array
  metrics: dict[str, tuple[jax.Array, jax.Array]]


def frozen_filter(patterns: Sequence[str]):
  """An NNX filter matching parameters whose dotted path matches any regex in `patterns`."""
  compiled = [re.compile(p) for p in patterns]

  def matches(path, value) -> bool:
    name = ".".join(str(p) for p in path)
    return any(c.search(name) for c in compiled)
  return matches


def tree_shardings(tree, mesh: Mesh, rules: LogicalRules):
  """NamedShardings for a tree of NNX variables (by logical axes) and plain arrays (replicated)."""
  def one(x):
    if isinstance(x, nnx.Variable):
      return x.replace(param_sharding(x, mesh, rules))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding_tree(batch, mesh: Mesh, data_axes: Sequence[str] = ("data", "fsdp")):
  """Rows (axis 0; axis 1 of (3, N, L) positions) over the data axes when they divide, else
  replicated. Vision index tables are replicated: they index one global patch array."""
  axes = tuple(a for a in data_axes if a in mesh.shape)
  ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1

  def spec(path, x):
    names = [getattr(k, "name", getattr(k, "key", None)) for k in path]
    if "vision" in names or "vision_features" in names or np.ndim(x) == 0:
      return NamedSharding(mesh, P())
    axis = 1 if names[-1] == "position_ids" else 0
    if x.shape[axis] % ways:
      return NamedSharding(mesh, P())
    parts = [None] * np.ndim(x)
    parts[axis] = axes
    return NamedSharding(mesh, P(*parts))
  return jax.tree_util.tree_map_with_path(spec, batch)


def put_global(tree, shardings, *, abstract: bool = False):
  """Host numpy (identical on every process) -> global arrays; each process fills its shards.
  `abstract`: `ShapeDtypeStruct`s with those shardings instead (nothing is transferred); a
  `ShapeDtypeStruct` in `tree` (an abstract learner's output) always stays one."""
  def put(x, sharding):
    if abstract or isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(np.shape(x), x.dtype if hasattr(x, "dtype")
                                  else np.asarray(x).dtype, sharding=sharding)
    if isinstance(x, jax.Array):          # already global (e.g. features computed on the mesh)
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def is_abstract(tree) -> bool:
  """Whether `tree` (e.g. a model's state) holds `ShapeDtypeStruct`s rather than arrays."""
  return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


class Learner:
  """Trainable/frozen split, optimizer and the jitted accumulate/apply pair.

  `model` may be abstract (`nnx.eval_shape`): see the module docstring."""

  def __init__(self, model: nnx.Module, optimizer: OptimizerConfig, mesh: Mesh, *,
               rules: LogicalRules = DEFAULT_RULES, frozen: Sequence[str] = (r"^visual\.",)):
    self.mesh = mesh
    self.rules = tuple(rules)
    self.optimizer_config = optimizer
    self.tx, self.schedule = make_optimizer(optimizer)
    trainable = nnx.All(nnx.Param, nnx.Not(frozen_filter(frozen)))
    self.graphdef, params, self.frozen = nnx.split(model, trainable, ...)
    if not jax.tree.leaves(params):
      raise ValueError(f"no trainable parameters left after freezing {list(frozen)}")
    self.abstract = is_abstract(params)
    self.param_shardings = tree_shardings(params, mesh, self.rules)
    self.frozen_shardings = tree_shardings(self.frozen, mesh, self.rules)
    self.frozen = self._place(self.frozen, self.frozen_shardings)
    abstract = jax.eval_shape(self._init_state, params)
    self.state_shardings = tree_shardings(abstract, mesh, self.rules)
    init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self.state = self._run(init, (self._place(params, self.param_shardings),))
    self._jits: dict = {}

  def _place(self, tree, shardings):
    """`tree` on the mesh: device buffers, or (abstract learner) shapes with shardings."""
    if self.abstract:
      return put_global(tree, shardings, abstract=True)
    return jax.device_put(tree, shardings)

  def _run(self, fn, args):
    """Runs a jitted step, or (abstract learner) returns the shapes of its result."""
    return fn.eval_shape(*args) if self.abstract else fn(*args)

  def _init_state(self, params) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params))

  # --- views ---------------------------------------------------------------------------------

  def model(self, params: nnx.State | None = None) -> nnx.Module:
    """The current policy as a module (shares buffers with the train state; do not donate)."""
    return nnx.merge(self.graphdef, self.state.params if params is None else params,
                     self.frozen)

  def trains(self, pattern: str) -> bool:
    """Whether any trainable parameter's dotted path matches regex `pattern`."""
    paths = jax.tree_util.tree_flatten_with_path(self.state.params)[0]
    return any(re.search(pattern, ".".join(str(getattr(k, "key", getattr(k, "name", k)))
                                           for k in path)) for path, _ in paths)

  def snapshot(self) -> nnx.State:
    """A copy of the current trainable parameters (a frozen reference policy)."""
    if self.abstract:
      return self.state.params
    return jax.tree.map(lambda x: x.copy(), self.state.params)

  def abstract_state(self):
    """Shape/dtype/sharding skeleton of the train state (the checkpoint restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self.state, self.state_shardings)

  def put_batch(self, batch):
    """Host numpy -> global arrays by `batch_sharding_tree` (abstract learner: their shapes)."""
    return put_global(batch, batch_sharding_tree(batch, self.mesh), abstract=self.abstract)

  # --- steps ---------------------------------------------------------------------------------

  def accumulate(self, loss_fn: LossFn, batch, acc: Accumulator | None = None) -> Accumulator:
    """Adds one micro-batch's gradient sums to `acc` (donated), or starts a new accumulator.
    `batch` is on the mesh already (`put_batch`)."""
    return self._run(*self.accumulate_call(loss_fn, batch, acc))

  def accumulate_call(self, loss_fn: LossFn, batch, acc: Accumulator | None = None):
    """(jitted function, its arguments) of `accumulate`."""
    key = ("accumulate", loss_fn, acc is None)
    if key not in self._jits:
      self._jits[key] = jax.jit(
          functools.partial(self._accumulate, loss_fn),
          in_shardings=(self.param_shardings, self.frozen_shardings, None, None),
          donate_argnums=(2,))
    return self._jits[key], (self.state.params, self.frozen, acc, batch)

  def _accumulate(self, loss_fn, params, frozen, acc, batch) -> Accumulator:
    with activation_sharding(self.mesh, self.rules):
      def objective(p):
        terms = loss_fn(nnx.merge(self.graphdef, p, frozen), batch)
        return terms.loss_sum, terms
      grads, terms = jax.grad(objective, has_aux=True)(params)
    grads = jax.lax.with_sharding_constraint(grads, self.param_shardings)
    new = Accumulator(grads, terms.loss_sum, terms.weight, terms.metrics)
    return new if acc is None else jax.tree.map(jnp.add, acc, new)

  def apply(self, acc: Accumulator) -> dict[str, float]:
    """One optimizer update from accumulated sums; returns host metrics of the step (an
    abstract learner: their shapes)."""
    self.state, metrics = self._run(*self.apply_call(acc))
    if self.abstract:
      return metrics
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    out["lr"] = float(self.schedule(int(self.state.step) - 1))    # the rate of this update
    return out

  def apply_call(self, acc: Accumulator):
    """(jitted function, its arguments) of `apply`."""
    if "apply" not in self._jits:
      self._jits["apply"] = jax.jit(
          self._apply, in_shardings=(self.state_shardings, None),
          out_shardings=(self.state_shardings, None), donate_argnums=(0, 1))
    return self._jits["apply"], (self.state, acc)

  def _apply(self, state: TrainState, acc: Accumulator):
    weight = jnp.maximum(acc.weight, 1e-9)
    grads = jax.tree.map(lambda g: g / weight, acc.grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": acc.loss_sum / weight, "grad_norm": grad_norm, "loss_weight": acc.weight}
    for name, (total, count) in acc.metrics.items():
      metrics[name] = total / jnp.maximum(count, 1e-9)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def step(self, loss_fn: LossFn, micro_batches) -> dict[str, float]:
    """accumulate over host micro-batches (placed on the mesh here), then apply."""
    acc = None
    for batch in micro_batches:
      acc = self.accumulate(loss_fn, self.put_batch(batch), acc)
    if acc is None:
      raise ValueError("Learner.step: no micro-batches")
    return self.apply(acc)

  def evaluate(self, fn: Callable, batch, params: nnx.State | None = None):
    """`fn(model, batch)` under jit without gradients (reference log-probs, eval losses);
    `batch` is host numpy (placed here). An abstract learner returns the result's shapes."""
    return self._run(*self.evaluate_call(fn, batch, params))

  def evaluate_call(self, fn: Callable, batch, params: nnx.State | None = None):
    """(jitted function, its arguments) of `evaluate`."""
    key = ("evaluate", fn)
    if key not in self._jits:
      def run(p, frozen, b):
        with activation_sharding(self.mesh, self.rules):
          return fn(nnx.merge(self.graphdef, p, frozen), b)
      self._jits[key] = jax.jit(run, in_shardings=(self.param_shardings,
                                                   self.frozen_shardings, None))
    return self._jits[key], (self.state.params if params is None else params, self.frozen,
                             self.put_batch(batch))
