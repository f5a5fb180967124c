"""Qwen2.5-VL and its text-only Qwen2 decoder as registered model families."""

from __future__ import annotations

from flax import nnx

from veripo_jax.models.family import ModelFamily, register_family
from veripo_jax.models.qwen2_5_vl.checkpoint import load_hf_checkpoint, save_hf_checkpoint
from veripo_jax.models.qwen2_5_vl.config import (PRESETS, Qwen25VLConfig, fit_to_tokenizer,
                                                 from_hf_config)
from veripo_jax.models.qwen2_5_vl.model import ModelInputs, Qwen25VL, prepare_batch
from veripo_jax.models.qwen2_5_vl.vision_index import coarsen_vision


def _create(config: Qwen25VLConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
            rope_mode: str = "legacy", scan_layers: bool = False,
            remat_policy: str = "nothing_saveable",
            attention_implementation: str | None = None) -> Qwen25VL:
  """A fresh model; the keywords as `Qwen25VL`'s (and `load`'s)."""
  return Qwen25VL(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs, rope_mode=rope_mode,
                  scan_layers=scan_layers, remat_policy=remat_policy,
                  attention_implementation=attention_implementation)


def _coarsen(config: Qwen25VLConfig, inputs: ModelInputs, patch_buckets) -> ModelInputs:
  if inputs.vision is None:
    return inputs
  return inputs.replace(vision=coarsen_vision(inputs.vision, patch_buckets,
                                              config.vision.spatial_merge_size))


def _save(model: Qwen25VL, path: str) -> None:
  save_hf_checkpoint(model, path)


_COMMON = dict(config_class=Qwen25VLConfig, create=_create, load=load_hf_checkpoint, save=_save,
               read_config=from_hf_config, fit_to_tokenizer=fit_to_tokenizer,
               prepare=prepare_batch, coarsen=_coarsen)

QWEN2_5_VL = register_family(ModelFamily(
    name="qwen2_5_vl", presets=PRESETS, accepts=lambda c: c.vision is not None, **_COMMON))

# The judge: Qwen2 / Qwen2.5 instruct checkpoints (Qwen2ForCausalLM), the same decoder without
# a vision tower; its presets are the Qwen2.5-VL ones with the tower removed.
QWEN2 = register_family(ModelFamily(
    name="qwen2", presets={k: v.replace(vision=None) for k, v in PRESETS.items()},
    accepts=lambda c: c.vision is None, **_COMMON))
