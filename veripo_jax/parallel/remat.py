"""Remat policies by name: what a config's `model.remat_policy` may say."""

import jax

# What the backward pass may keep of a layer's forward when the caller asks for remat (the rest
# is recomputed); "none" keeps everything (no recomputation at all).
REMAT_POLICIES = {
    "nothing_saveable": None,            # jax.checkpoint's default: only the layer's input
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "none": None,
}


def check_remat_policy(name: str) -> str:
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat_policy: unknown {name!r}; choose from {sorted(REMAT_POLICIES)}")
  return name
