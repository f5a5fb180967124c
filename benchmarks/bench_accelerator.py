"""Train-step MFU of the 3B recipe's GRPO update, and rollout tokens/s, on this accelerator.

One GRPO round of a stage of `--config` (default configs/veripo_qwen2_5_vl_3b_gpu.py, stage
search_video) as the run builds it: the stage's config typed by `rl.plan`, the model from
`config.model` (dtype, param_dtype, scan_layers, remat_policy) with random weights of
`--preset` (default: the config's, 3b; no download), the mesh and sharding rules of the
config, the stage's `Learner` (frozen vision tower), its sampler (`inference.generate`, as
`grpo.grpo_round` calls it) and its update batches (`grpo.round_updates`: micro-batches of the
stage's `micro_batch` responses, `global_batch` responses a step).

Prompts are `--prompt_tokens` random text tokens (1536: the recipe's bucket for a 16-frame video
and its question; with the tower frozen the update reads precomputed features, so a video's
placeholder tokens cost the decoder what text tokens do); responses run to `--new_tokens`
(default the stage's max_new_tokens, 2048), EOS disabled.

- rollout: `--prompts` x G sequences; prefill alone (max_new_tokens=1) and the whole rollout are
  timed after a compiling call each; decode tokens/s = rows x (T - 1) / (whole - prefill).
- train step: Learner.accumulate over the step's micro-batches (already on the mesh) + apply,
  the median of `--steps` steps after a compiling one.
- model FLOPs of a step (MFU's numerator; remat's recomputation is not counted): 3 x the
  forward's, where the forward of a sequence of S = prompt + response tokens is
  2 x (decoder matmul weights) x S + 2 x hidden x vocab x (response tokens: only they reach the
  LM head) + per layer 2 x heads x head_dim x S^2 (QK^T and AV over the causal half).
- MFU = achieved FLOP/s / (devices x the device's dense bf16 peak, from the table below); a
  device not in the table (a CPU) prints its achieved FLOP/s only.

  python benchmarks/bench_accelerator.py                   # an accelerator (3b)
  python benchmarks/bench_accelerator.py --preset=tiny     # CPU, about a minute
      [--config configs/X.py --stage NAME --prompt_tokens N --new_tokens N --prompts N
       --steps N]
"""

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

# The recipe assumes JAX may take 95% of a GPU (its docstring); before jax loads.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from veripo_jax.config_utils import load_config_file  # noqa: E402
from veripo_jax.parallel.sharding import make_mesh, merge_rules  # noqa: E402
from veripo_jax.rl.grpo import group_builder, round_updates  # noqa: E402
from veripo_jax.rl.loop import load_policy, model_family  # noqa: E402
from veripo_jax.rl.plan import plan  # noqa: E402
from veripo_jax.rl.rollout import Rollouts  # noqa: E402
from veripo_jax.rl.stage import RunContext  # noqa: E402
from veripo_jax.inference import generate  # noqa: E402
from veripo_jax.train.learner import Learner  # noqa: E402
from veripo_jax.train.metrics import MetricsWriter  # noqa: E402
from veripo_jax.train.preemption import PreemptionGuard  # noqa: E402

# Dense bf16 peak FLOP/s per device (a chip; an NVIDIA GPU), matched in order against
# `device_kind` (lower case): the first entry whose every word is in it.
PEAKS = (
    ("h100 pcie", 756e12), ("h100", 989e12), ("h200", 989e12),
    ("a100", 312e12),
    ("v5 lite", 197e12), ("v5e", 197e12), ("v6 lite", 918e12), ("v6e", 918e12),
    ("v5p", 459e12), ("tpu v5", 459e12), ("tpu v4", 275e12),
)
# Shapes of a --preset=tiny run (the recipe's batches, shorter sequences): about a minute on a
# 2-core CPU.
TINY = dict(prompt_tokens=128, new_tokens=128)


def peak_flops(kind: str) -> float | None:
  kind = kind.lower()
  for name, peak in PEAKS:
    if all(word in kind for word in name.split()):
      return peak
  return None


def prompt_batch(config, prompts: int, width: int, seed: int) -> dict:
  """`prompts` text prompts of `width` random ordinary tokens (no media, no padding), in the
  loader's batch fields that a GRPO round reads."""
  special = [config.pad_token_id, config.eos_token_id, config.bos_token_id,
             config.vision_start_token_id, config.vision_end_token_id, config.vision_token_id,
             config.image_token_id, config.video_token_id]
  ordinary = np.setdiff1d(np.arange(config.vocab_size), special)
  ids = np.random.RandomState(seed).choice(ordinary, (prompts, width)).astype(np.int32)
  return dict(input_ids=ids, attention_mask=np.ones_like(ids),
              next_position=np.full((prompts,), width, np.int32),
              example_mask=np.ones((prompts,), np.int32),
              id=np.array([f"p{i}" for i in range(prompts)], object),
              source_index=np.arange(prompts))


def rollouts_of(out, prompts: dict, group: int, seed: int) -> Rollouts:
  """The rollout output as the round's `Rollouts`, with random rewards and advantages (no
  rewards are computed here; random ones keep `filter_zero_variance` from dropping groups)."""
  tokens, logprobs, lengths = (np.asarray(x) for x in (out.tokens, out.logprobs, out.lengths))
  n = len(tokens)
  owner = np.repeat(np.arange(len(prompts["input_ids"])), group)
  rng = np.random.RandomState(seed)
  return Rollouts(owner=owner, tokens=tokens, lengths=lengths, logprobs=logprobs,
                  texts=[""] * n, rewards={"total": rng.rand(n).astype(np.float32)},
                  advantages=rng.randn(n).astype(np.float32), truncated=np.ones(n, bool),
                  prompt_ids=[str(prompts["id"][o]) for o in owner],
                  source_index=prompts["source_index"][owner], examples=[{}] * n)


def step_flops(config, micro_batches) -> float:
  """Model FLOPs of one optimizer step over `micro_batches` (see the module docstring)."""
  t = config.text
  q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
  layer_weights = t.hidden_size * (2 * q + 2 * kv) + 3 * t.hidden_size * t.intermediate_size
  total = 0.0
  for batch in micro_batches:
    seq = batch.sequences
    rows, width = np.shape(seq.inputs.input_ids)
    responses, r = np.shape(seq.targets)
    forward = rows * t.num_hidden_layers * (2.0 * layer_weights * width
                                            + 2.0 * q * width * width)
    forward += responses * 2.0 * t.hidden_size * t.vocab_size * r
    total += 3 * forward
  return total


def timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start, out


def human(x: float, unit: str = "") -> str:
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.3g} {prefix}{unit}"
  return f"{x:.3g} {unit}"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/veripo_qwen2_5_vl_3b_gpu.py")
  p.add_argument("--stage", default="search_video", help="a grpo stage of the config")
  p.add_argument("--preset", default="", help="model preset (default: the config's)")
  p.add_argument("--prompt_tokens", type=int, default=0,
                 help="default 1536 (tiny: 128)")
  p.add_argument("--new_tokens", type=int, default=0,
                 help="response tokens: default the stage's max_new_tokens (tiny: 128)")
  p.add_argument("--prompts", type=int, default=0,
                 help="prompts per round (default: the stage's, all hosts)")
  p.add_argument("--steps", type=int, default=3, help="timed train steps")
  args = p.parse_args()
  # CPU cannot donate some buffers the steps donate (the accelerators can).
  warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

  cfg = load_config_file(args.config)
  planned = plan(cfg)[args.stage]
  if planned.kind != "grpo":
    raise SystemExit(f"--stage={args.stage} is a {planned.kind} stage, not grpo")
  stage = planned.config
  preset = args.preset or cfg.model.preset
  tiny = preset == "tiny"
  if jax.devices()[0].platform == "cpu" and not tiny:
    print(f"warning: preset {preset} on a CPU takes hours; --preset=tiny runs in about a minute",
          file=sys.stderr, flush=True)
  prompt_tokens = args.prompt_tokens or (TINY["prompt_tokens"] if tiny else 1536)
  new_tokens = args.new_tokens or (TINY["new_tokens"] if tiny else stage.rollout.max_new_tokens)
  prompts_n = args.prompts or stage.data.batch_size * jax.process_count()
  group = stage.rollout.num_samples
  # The whole round trains: a step takes global_batch responses, so P x G of them make
  # P x G / global_batch steps (at least one full step).
  if prompts_n * group < stage.global_batch:
    raise SystemExit(f"{prompts_n} prompts x G={group} < one step's {stage.global_batch}")
  stage = dataclasses.replace(stage, recompute_old_logprobs=False,
                              data=dataclasses.replace(stage.data, batch_size=prompts_n))

  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  rules = merge_rules(cfg.get("sharding_rules", ()))
  config = model_family(cfg).preset(preset)
  model = load_policy(cfg, "", config, mesh, rules)
  learner = Learner(model, dataclasses.replace(stage.optimizer, total_steps=1000), mesh,
                    rules=rules, frozen=stage.frozen)
  trainable = sum(x.size for x in jax.tree.leaves(learner.state.params))
  frozen = sum(x.size for x in jax.tree.leaves(learner.frozen))
  workdir = tempfile.mkdtemp(prefix="bench_accelerator_")
  ctx = RunContext(workdir=workdir, mesh=mesh, model_config=config, tokenizer=None,
                   tokenizer_dir="", dataset_dir="", writer=MetricsWriter(workdir, enabled=False),
                   guard=PreemptionGuard(), rope_mode=cfg.model.rope_mode, seed=cfg.seed,
                   rules=rules)

  # Rollout, as grpo_round samples: the prompts prepared once by the round's builder.
  prompts = prompt_batch(config, prompts_n, prompt_tokens, cfg.seed)
  builder = group_builder(ctx, learner, stage, prompts)
  r = stage.rollout

  def rollout(tokens: int):
    return generate(learner.model(), prompts, tokens, temperature=r.temperature, top_p=r.top_p,
                    top_k=r.top_k, rng=jax.random.key(cfg.seed), num_samples=group,
                    eos_token_ids=(-1,), pad_token_id=config.pad_token_id, mesh=mesh,
                    rules=rules, prepared=builder.generation_inputs())

  first_prefill_s, _ = timed(lambda: rollout(1))
  prefill_s, _ = timed(lambda: rollout(1))
  first_rollout_s, _ = timed(lambda: rollout(new_tokens))
  rollout_s, out = timed(lambda: rollout(new_tokens))
  rows = prompts_n * group

  # The round's updates: whole steps of global_batch responses, on the mesh once.
  _, steps = round_updates(ctx, learner, stage, prompts, rollouts_of(out, prompts, group, 0),
                           0, builder)
  steps = [s for s in steps if sum(len(b.advantages) for b in s) == stage.global_batch]
  if not steps:
    raise SystemExit(f"no whole step of {stage.global_batch} responses in the round")
  placed = [[learner.put_batch(b) for b in s] for s in steps]

  def train_step(k: int):
    acc = None
    for batch in placed[k % len(placed)]:
      acc = learner.accumulate(stage.objective, batch, acc)
    return learner.apply(acc)          # host metrics: waits for the step

  first_step_s, _ = timed(lambda: train_step(0))
  step_times = [timed(lambda k=k: train_step(k + 1))[0] for k in range(args.steps)]
  step_s = statistics.median(step_times)
  flops = step_flops(config, steps[0])
  seq = steps[0][0].sequences
  width = np.shape(seq.inputs.input_ids)[1]
  response = np.shape(seq.targets)[1]
  step_tokens = sum(np.size(b.sequences.inputs.input_ids) for b in steps[0])

  device = jax.devices()[0]
  devices = mesh.devices.size
  peak = peak_flops(device.device_kind)
  achieved = flops / step_s
  t = config.text
  print(f"device: {device.device_kind} ({device.platform}) x{devices}; "
        + (f"dense bf16 peak {human(peak, 'FLOP/s')} a device" if peak else "no peak known")
        + ("" if cfg.model.dtype == "bfloat16" or not peak else
           f" (compute dtype {cfg.model.dtype}: MFU is against the bf16 peak)"))
  print(f"model: preset {preset} ({t.num_hidden_layers} layers, hidden {t.hidden_size}, vocab "
        f"{t.vocab_size}), {human(trainable)} trainable + {human(frozen)} frozen parameters, "
        f"{cfg.model.dtype} compute, {cfg.model.param_dtype} weights, scan_layers "
        f"{cfg.model.get('scan_layers', False)}, remat {stage.objective.remat} "
        f"({cfg.model.get('remat_policy', 'nothing_saveable')})")
  print(f"stage {args.stage} of {args.config}: G={group}, {stage.global_batch} responses a step "
        f"in micro-batches of {stage.micro_batch}; sequences {prompt_tokens} prompt + "
        f"{response} response tokens (row width {width})")
  lines = [
      ("rollout", f"{prompts_n} prompts x G={group} = {rows} rows, {prompt_tokens} prompt + "
                  f"{new_tokens} new tokens"),
      ("  prefill", f"{prefill_s:.3f} s (first call, with compile: {first_prefill_s:.1f} s)"),
      ("  whole rollout", f"{rollout_s:.3f} s (first call, with compile: "
                          f"{first_rollout_s:.1f} s): {rows * new_tokens / rollout_s:,.0f} "
                          "tokens/s"),
      ("  decode tokens/s", f"{rows * (new_tokens - 1) / max(rollout_s - prefill_s, 1e-9):,.0f}"
                            f" ({(rollout_s - prefill_s) / max(new_tokens - 1, 1) * 1e3:.2f} ms "
                            "a step)"),
      ("train step", f"{step_s:.3f} s (median of {len(step_times)}: "
                     f"{', '.join(f'{s:.3f}' for s in step_times)}; first, with compile: "
                     f"{first_step_s:.1f} s)"),
      ("  tokens/s", f"{step_tokens / step_s:,.0f} ({step_tokens:,} a step, padding included)"),
      ("  model FLOPs a step", human(flops, "FLOP")),
      ("  achieved", human(achieved, "FLOP/s") + (f" ({human(achieved / devices, 'FLOP/s')} a "
                                                  "device)" if devices > 1 else "")),
      ("  MFU", f"{100 * achieved / (peak * devices):.1f}%" if peak else
                "n/a (no peak known for this device)"),
  ]
  shutil.rmtree(workdir, ignore_errors=True)
  width_ = max(len(k) for k, _ in lines)
  print()
  for key, value in lines:
    print(f"{key:<{width_}}  {value}")


if __name__ == "__main__":
  main()
