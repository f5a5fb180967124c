"""Qwen2.5-VL in Flax NNX: config, model, rope index, HF checkpoint conversion."""

from veripo_jax.models.qwen2_5_vl.checkpoint import load_hf_checkpoint, save_hf_checkpoint
from veripo_jax.models.qwen2_5_vl.config import (PRESETS, Qwen25VLConfig, TextConfig,
                                                 VisionConfig, fit_to_tokenizer, from_hf_config,
                                                 get_preset)
from veripo_jax.models.qwen2_5_vl.model import KVCache, ModelInputs, Qwen25VL, prepare_inputs
from veripo_jax.models.qwen2_5_vl.rope_index import get_rope_index

__all__ = ["Qwen25VL", "Qwen25VLConfig", "TextConfig", "VisionConfig", "PRESETS", "get_preset",
           "fit_to_tokenizer", "from_hf_config", "load_hf_checkpoint", "save_hf_checkpoint", "KVCache",
           "ModelInputs", "prepare_inputs", "get_rope_index"]
