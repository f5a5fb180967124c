"""What the rest of the code needs of a model: the `CausalLM` protocol and a family registry.

`inference/`, `serving/` and `rl/` hold a model only through the methods of `CausalLM`, and
reach architecture-level operations (presets, checkpoint load and save, host-side input
preparation) through the model's `ModelFamily`, looked up by name (`config.model.family`) or
by the model config's type. A new architecture is one package that registers its family; the
generation loop, the judge server and the trainers do not change.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class CausalLM(Protocol):
  """A decoder with a static-size cache; `inputs` are the family's array-only model inputs."""
  config: Any          # the family's config: eos_token_id, pad_token_id, vocab_size,
  dtype: Any           # media_token_ids

  def prepare(self, batch: Mapping[str, Any], *, bucketed: bool = True
              ) -> tuple[Any, np.ndarray]:
    """Host side: processor fields (input_ids, attention_mask, media) -> (inputs, the rope
    position of each row's first generated token)."""

  def init_cache(self, batch: int, length: int) -> Any:
    """An empty cache; it has `repeat(n)`, `per_slot()`, `insert(slot, row)`, `expand()`,
    `squeeze()`, `index` and `max_length`."""

  def cache_axes(self, per_slot: bool = False) -> Any:
    """The cache's pytree with a logical-axes tuple for each array (the sharding rules' names)."""

  def prefill(self, inputs: Any, cache: Any) -> tuple[jax.Array, Any]:
    """Prompt into the cache -> (last-token logits (B, V), cache)."""

  def decode_step(self, tokens: jax.Array, positions: jax.Array, cache: Any
                  ) -> tuple[jax.Array, Any]:
    """One token per row -> (logits (B, V), cache)."""

  def hidden_states(self, inputs: Any, remat: bool = False) -> jax.Array:
    """Final hidden states (B, L, D) without a cache: the training path."""

  def logits(self, h: jax.Array) -> jax.Array:
    """LM head over hidden states: sequence log-probs read only the columns they need."""

  def encode_media(self, media: Any) -> jax.Array:
    """The media encoder's features for a batch's media inputs (a frozen tower's cache)."""


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One architecture's entry points. Callables take the family's config type."""
  name: str
  config_class: type
  presets: Mapping[str, Any]
  # (config, *, dtype, param_dtype, rngs, rope_mode, scan_layers, remat_policy,
  #  attention_implementation)
  create: Callable[..., CausalLM]
  # (path, *, dtype, param_dtype, mesh, rules, rope_mode, scan_layers, remat_policy,
  #  attention_implementation)
  load: Callable[..., CausalLM]
  save: Callable[[CausalLM, str], None]
  read_config: Callable[[str], Any]    # a checkpoint directory -> its config
  fit_to_tokenizer: Callable[[Any, Any], Any]
  # (config, batch, *, rope_mode, bucketed) -> (inputs, next positions), as `CausalLM.prepare`
  prepare: Callable[..., tuple[Any, np.ndarray]]
  # (config, inputs, patch_buckets) -> inputs whose media take a few padded shapes
  coarsen: Callable[[Any, Any, Sequence[int]], Any]
  accepts: Callable[[Any], bool] = lambda config: True

  def preset(self, name: str):
    if name not in self.presets:
      raise ValueError(f"unknown {self.name} preset {name!r}; choose from {sorted(self.presets)}")
    return self.presets[name]


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
  if family.name in FAMILIES:
    raise ValueError(f"model family {family.name!r} is already registered")
  FAMILIES[family.name] = family
  return family


def get_family(name: str) -> ModelFamily:
  if name not in FAMILIES:
    raise KeyError(f"unknown model family {name!r}; registered: {sorted(FAMILIES)}")
  return FAMILIES[name]


def family_of(config: Any) -> ModelFamily:
  """The first registered family whose config type and checks accept `config`."""
  for family in FAMILIES.values():
    if isinstance(config, family.config_class) and family.accepts(config):
      return family
  raise TypeError(f"no registered model family takes a {type(config).__name__}")
