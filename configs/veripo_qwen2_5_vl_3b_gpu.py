"""VerIPO's training recipe (configs/veripo_qwen2_5_vl_7b.py, the paper's Table 1) for
Qwen2.5-VL-3B-Instruct on one 80 GB GPU (A100 / H100).

  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m veripo_jax.main \
      --config=configs/veripo_qwen2_5_vl_3b_gpu.py --workdir=runs/veripo_3b \
      --config.model.checkpoint=/path/to/Qwen2.5-VL-3B-Instruct \
      --config.data.dataset_dir=/path/to/tfds/veripo_train/VERSION \
      --config.stages.benchmarks.video_root=/path/to/benchmark/videos \
      --config.stages.verifier_1.judge.checkpoint=/path/to/Qwen2.5-1.5B-Instruct

(JAX takes 75% of the GPU by default; the memory budget below assumes 95%.) The stages, data
layout and the three placeholders that travel together are the 7B config's. Kept from Table 1:
G = 8, temperature 1, the learning rates, the global batches (so the optimizer steps per epoch
are the paper's), Adam (0.9, 0.95), 3% warmup, clip 0.2 / dual clip 3, KL 0, DPO beta 0.1,
the video sampling, the greedy evaluation. Changed for memory, each explained below: 16 prompts
per rollout round instead of 64, responses up to 2048 tokens instead of 4096, and no long
documents in the reasoning activation stage. Expect about two weeks for the whole loop on one
GPU (10k rollout rounds at an estimated minute and a half each); `--config.stages.<name>.rounds`
shortens a stage.
"""

import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
# Judge: the paper does not name its "small LLM"; a 1.5B instruct model keeps the verifier
# stage short on one GPU (Qwen2.5-7B-Instruct also fits: 15 GB of weights).
JUDGE_CHECKPOINT = "/path/to/Qwen2.5-1.5B-Instruct"


def _recipe_module():
  """The 7B config file as a module: the recipe is written once, there."""
  spec = importlib.util.spec_from_file_location(
      "veripo_qwen2_5_vl_7b", os.path.join(_HERE, "veripo_qwen2_5_vl_7b.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  r = _recipe_module()
  # Memory on one GPU (Qwen2.5-VL-3B: 3.1B text parameters, 0.7B vision; 36 layers, hidden
  # 2048, 16 heads, 2 KV heads, vocab 151936), estimated, not measured:
  # - always: fp32 weights 15 GB (bf16 would lose a 5e-7 step: below its 2^-8 resolution) +
  #   fp32 Adam moments of the trainable text part 25 GB = 40 GB;
  # - an update of one micro-batch of 8 responses (the least GRPO allows: whole groups) of
  #   L = 1.5k prompt + 2k response tokens: gradients 12 GB, bf16 weight copies <= 6 GB,
  #   remat'd layer inputs 4 GB, and the larger of the attention scores (materialised by XLA:
  #   8 x 16 heads x L^2 x 4 B = 6.6 GB, about 16 GB in the backward pass) and the logits
  #   (8 x 2048 x 151936, 5 GB in bf16, twice that in fp32 intermediates): about 75 GB at
  #   worst. With 4096-token responses the attention alone needs about 40 GB: 4096 fits a
  #   141 GB H200 (`--config.stages.<grpo stage>.rollout.max_new_tokens=4096`, and the
  #   verifiers' `verifier.max_reasoning_tokens`), not an 80 GB card;
  # - rollouts: 16 prompts x 8 = 128 sequences x 3.5k tokens of bf16 KV cache (36 KB a
  #   token) = 16.5 GB, next to the 40 GB above;
  # - evaluation (no optimizer state): one 128-frame video (16.4k prompt tokens) at a time,
  #   its prefill attention about 40 GB next to 22 GB of weights.
  c = r.recipe(
      checkpoint="/path/to/Qwen2.5-VL-3B-Instruct", preset="3b",
      mesh={"data": 1, "fsdp": -1, "tensor": 1},      # every device of the host (here: one)
      hosts=1, prompts_per_round=16,
      activation_micro_batch=8, micro_batch=8, dpo_micro_batch=4,   # 4 pairs = 8 sequences
      max_response=2048, eval_batch_size=1, remat=True, save_every_rounds=20,
      # A long document is a prompt of many thousand tokens, and a round pads all of its 128
      # responses to the longest prompt: past about 2k prompt tokens neither the rollout cache
      # nor the update fits 80 GB. Table 1's 1k long documents (1.4% of the stage) are left out.
      activation_sources=("math_text", "reasoning_image"),
      # The verifier runs with no policy in memory: a 1.5B judge is 3 GB in bf16, 64 slots of
      # 4k-token judge prompts (29 KB of cache a token) 7.5 GB.
      judge=dict(checkpoint=JUDGE_CHECKPOINT, dtype="bfloat16", max_concurrent_decodes=64,
                 max_prefill_length=4096, max_decode_length=16, timeout_s=120.0,
                 max_workers=64))
  return c
