"""Model families behind one protocol (`family.CausalLM`); importing this registers the
built-in ones."""

from veripo_jax.models.family import (FAMILIES, CausalLM, ModelFamily, family_of, get_family,
                                      register_family)
from veripo_jax.models.qwen2_5_vl.family import QWEN2, QWEN2_5_VL

__all__ = ["CausalLM", "ModelFamily", "FAMILIES", "family_of", "get_family", "register_family",
           "QWEN2", "QWEN2_5_VL"]
