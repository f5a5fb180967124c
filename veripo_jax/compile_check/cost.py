"""Roofline estimate of GRPO and DPO time per sample on a TPU slice, from the model's shapes.

  python -m veripo_jax.compile_check.cost --config=configs/veripo_qwen2_5_vl_7b.py \
      --topology=v5p-128 [--prompt_length=1536]

An estimate, not a measurement. Each program's time is max(FLOPs / peak FLOP/s,
HBM bytes / HBM bandwidth) per chip: perfect sharding over the slice, no collective, host or
launch time, bf16 weights read once per decode step, every rollout running all
`max_new_tokens` steps (the "up to" bound). FLOPs are counted from the architecture because
XLA's cost analysis counts a loop body once (a scanned layer stack reports one layer, the
decode loop one step); `tests/test_cost.py` checks the decoder's count against XLA's on an
unrolled decoder (0.6% apart: XLA also counts norms, rope and softmax). A GRPO sample is one
prompt with its G rollouts and its share of the update; a DPO sample is one pair with its
reference pass. The MFU bound is model FLOPs (2 per parameter per
token forward, 6 trained, no remat) over the estimated time at peak.
"""

from __future__ import annotations

import dataclasses
import math
import sys

from veripo_jax.compile_check.topology import Topology

# Forward passes a remat'd training step runs per forward: forward, its recompute, and the
# backward's two (nothing_saveable); saving the matmuls skips the recompute of most FLOPs.
REMAT_PASSES = {"none": 3.0, "dots_saveable": 3.0, "dots_with_no_batch_dims_saveable": 3.0,
                "nothing_saveable": 4.0}


def decoder_matmul_params(text) -> int:
  """Weights a token multiplies in the text decoder: attention and gated MLP of every layer,
  and the output projection (the embedding lookup is not a matmul)."""
  q = text.num_attention_heads * text.head_dim
  kv = text.num_key_value_heads * text.head_dim
  layer = text.hidden_size * (2 * q + 2 * kv) + 3 * text.hidden_size * text.intermediate_size
  return text.num_hidden_layers * layer + text.hidden_size * text.vocab_size


def decoder_forward_flops(text, tokens: float, keys: float) -> float:
  """Forward FLOPs of `tokens` query tokens, each attending to `keys` keys on average."""
  attention = 4 * text.num_hidden_layers * text.num_attention_heads * text.head_dim * keys
  return tokens * (2 * decoder_matmul_params(text) + attention)


def causal_keys(length: float) -> float:
  """Mean keys a token of a causal sequence of `length` attends to."""
  return (length + 1) / 2


def vision_forward_flops(vision, patches: float, patches_per_frame: float) -> float:
  """Forward FLOPs of the vision tower on `patches` 14x14x2 patches: patch embedding, blocks
  (windowed attention, full attention within a frame group on `fullatt_block_indexes`),
  and the 2x2 merger into the decoder's width."""
  h, i = vision.hidden_size, vision.intermediate_size
  embed = 3 * vision.temporal_patch_size * vision.patch_size ** 2 * h
  block = 4 * h * h + 3 * h * i
  merge = vision.spatial_merge_size ** 2
  merger = merge * h * merge * h + merge * h * vision.out_hidden_size
  window = min(patches_per_frame, (vision.window_size // vision.patch_size) ** 2)
  full = len(vision.fullatt_block_indexes)
  attention = 4 * h * (full * patches_per_frame + (vision.depth - full) * window)
  return patches * 2 * (embed + vision.depth * block) + patches * attention + \
      patches / merge * 2 * merger


@dataclasses.dataclass(frozen=True)
class Estimate:
  """One stage's estimated seconds per sample, by part, and its MFU bound."""
  stage: str
  kind: str                         # grpo or dpo
  sample: str                       # what one sample is
  seconds: dict[str, float]         # part -> seconds per sample
  model_flops: float                # per sample

  @property
  def total_s(self) -> float:
    return sum(self.seconds.values())

  def mfu_bound(self, topology: Topology) -> float:
    return self.model_flops / (self.total_s * topology.chips * topology.peak_flops)


class Roofline:
  """Times of FLOPs and bytes spread over a slice's chips, weights sharded `tensor` ways."""

  def __init__(self, topology: Topology, tensor: int = 1):
    self.topology, self.tensor = topology, tensor

  def compute(self, flops: float) -> float:
    return flops / (self.topology.chips * self.topology.peak_flops)

  def step(self, flops: float, bytes_per_chip: float) -> float:
    return max(self.compute(flops), bytes_per_chip / self.topology.hbm_bandwidth)


def _vision_flops(config, settings) -> float:
  """The frozen tower's forward FLOPs on one prompt video at the stage's caps."""
  if config.vision is None:
    return 0.0
  merge = config.vision.spatial_merge_size ** 2
  per_frame = settings.max_pixels // config.vision.patch_size ** 2
  return vision_forward_flops(config.vision, video_tokens(config, settings) * merge, per_frame)


def video_tokens(config, vision_settings) -> int:
  """Decoder tokens of a prompt video at the stage's frame and pixel caps."""
  if config.vision is None:
    return 0
  v = config.vision
  groups = math.ceil(vision_settings.max_frames / v.temporal_patch_size)
  return groups * vision_settings.max_pixels // (v.patch_size ** 2 * v.spatial_merge_size ** 2)


def grpo_estimate(name: str, cfg, config, roof: Roofline, *, prompt_length: int,
                  remat_policy: str) -> Estimate:
  """One prompt: vision, prefill, G rollouts of up to `max_new_tokens`, log-prob passes and the
  update over its G sequences."""
  text, topology = config.text, roof.topology
  g, r, p = cfg.rollout.num_samples, cfg.rollout.max_new_tokens, prompt_length
  prompts = cfg.data.batch_size * topology.hosts
  rows = prompts * g
  # A decode step: every row's token; each chip reads its tensor shard of the bf16 weights
  # (gathered over the batch axes) and its rows' KV cache at the mean context.
  weights = decoder_matmul_params(text) * 2 / roof.tensor
  context = p + r / 2
  kv = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 2 * context
  step = roof.step(decoder_forward_flops(text, rows, context),
                   weights + kv * rows / topology.chips)
  tokens = p + g * r if cfg.share_prompt else g * (p + r)
  forward = decoder_forward_flops(text, tokens, causal_keys(p + r))
  prefill = decoder_forward_flops(text, p, causal_keys(p))
  passes = int(cfg.recompute_old_logprobs) + int(bool(cfg.objective.kl_coef))
  train = REMAT_PASSES[remat_policy if cfg.objective.remat else "none"]
  vision = _vision_flops(config, cfg.data.vision)
  seconds = {"vision": roof.compute(vision), "prefill": roof.compute(prefill),
             "decode": r * step / prompts, "log-prob passes": roof.compute(passes * forward),
             "update": roof.compute(train * forward)}
  model = (vision + prefill + decoder_forward_flops(text, g * r, context)
           + (passes + 3) * forward)
  return Estimate(name, "grpo", f"a prompt and its {g} rollouts of up to {r} tokens", seconds,
                  model)


def dpo_estimate(name: str, cfg, config, roof: Roofline, *, prompt_length: int,
                 remat_policy: str) -> Estimate:
  """One pair: its share of the prompt's vision features, the reference pass and the update
  over prompt, chosen and rejected (with `share_prompt` a row holds `pairs_per_row` pairs
  after one prompt)."""
  text = config.text
  p, r = prompt_length, cfg.data.response_buckets[-1]
  share = cfg.pairs_per_row if cfg.share_prompt else 1
  tokens = p / share + 2 * r if cfg.share_prompt else 2 * (p + r)
  forward = decoder_forward_flops(text, tokens, causal_keys(p + r))
  train = REMAT_PASSES[remat_policy if cfg.objective.remat else "none"]
  vision = _vision_flops(config, cfg.data.vision) / share
  seconds = {"vision": roof.compute(vision), "reference": roof.compute(forward),
             "update": roof.compute(train * forward)}
  return Estimate(name, "dpo", f"a pair of up to {r}-token responses", seconds,
                  vision + 4 * forward)


ESTIMATES = {"grpo": grpo_estimate, "dpo": dpo_estimate}


def estimates(cfg, topology: Topology, prompt_length: int) -> list[Estimate]:
  """The estimate of every GRPO and DPO stage of a config on `topology`."""
  from veripo_jax.compile_check.inputs import run_model_config
  from veripo_jax.parallel.sharding import mesh_shape
  from veripo_jax.rl.plan import plan
  _, _, config = run_model_config(cfg)
  tensor = mesh_shape(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, topology.chips)["tensor"]
  policy = cfg.model.get("remat_policy", "nothing_saveable")
  roof = Roofline(topology, tensor)
  return [ESTIMATES[s.kind](name, s.config, config, roof, prompt_length=prompt_length,
                            remat_policy=policy)
          for name, s in plan(cfg).items() if s.kind in ESTIMATES]


def format_estimates(rows: list[Estimate], topology: Topology) -> str:
  lines = [f"{'stage':<18} {'ms/sample':>9} {'MFU bound':>9}  ms by part; a sample is"]
  for e in rows:
    split = ", ".join(f"{k} {1e3 * e.seconds[k]:.1f}" for k in e.seconds)
    lines.append(f"{e.stage:<18} {1e3 * e.total_s:9.1f} {e.mfu_bound(topology):9.1%}  {split}; "
                 f"{e.sample}")
  return "\n".join(lines)


def main(argv) -> None:
  from veripo_jax.compile_check.topology import TopologyError, parse_topology
  from veripo_jax.config_utils import ConfigError
  del argv
  try:
    topology = parse_topology(_TOPOLOGY.value or "")
    rows = estimates(_CONFIG.value, topology, _PROMPT_LENGTH.value)
  except (TopologyError, ConfigError, ValueError) as e:
    print(f"compile_check.cost: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"{topology.name}: {topology.chips} chips, roofline estimate (not a measurement), "
        f"prompt {_PROMPT_LENGTH.value} tokens")
  print(format_estimates(rows, topology))
  grpo = [e for e in rows if e.kind == "grpo"]
  dpo = [e for e in rows if e.kind == "dpo"]
  if grpo and dpo:
    print(f"GRPO / DPO time per sample: {grpo[0].total_s / dpo[0].total_s:.1f}x "
          f"({grpo[0].stage} / {dpo[0].stage})")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file.")
  _TOPOLOGY = flags.DEFINE_string("topology", None, "Cloud TPU accelerator type, e.g. v5p-128.")
  _PROMPT_LENGTH = flags.DEFINE_integer("prompt_length", 1536, "Prompt tokens (video included).")
  app.run(main)
