"""Embedded default: a tiny Qwen2.5-VL on the synthetic video-QA world, on a laptop CPU.

  python -m veripo_jax.main --config=configs/tiny.py --workdir=runs/tiny

SFT warm start on the world's templated reasoning, evaluation on held-out prompts, GRPO, and
evaluation again.
"""

import ml_collections

_SMALL_VIDEO = dict(video_min_pixels=56 * 56, max_pixels=112 * 112, image_min_pixels=56 * 56,
                    image_max_pixels=112 * 112)
_BUCKETS = dict(prompt_buckets=(256, 384, 512, 768), response_buckets=(64, 96, 128, 192, 256),
                patch_buckets=(512, 1024, 2048, 4096))


def _data(split, batch_size, **kw):
  return ml_collections.ConfigDict(dict(split=split, batch_size=batch_size,
                                        vision=dict(_SMALL_VIDEO), **_BUCKETS, **kw))


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.synthetic = True               # build the synthetic world into WORKDIR/world
  c.data.world_seed = 0
  c.data.split_sizes = {"train": 512, "heldout": 64}
  c.data.world = ml_collections.ConfigDict({"tokenizer_corpus_examples": 1500})
  c.data.dataset_dir = ""               # with synthetic=False: a TFDS ArrayRecord dataset dir
  c.data.tokenizer_dir = ""

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"               # used when no checkpoint is given (fresh weights)
  c.model.text = ml_collections.ConfigDict()     # TextConfig fields replacing the preset's
  c.model.vision = ml_collections.ConfigDict()   # VisionConfig fields replacing the preset's
  c.model.checkpoint = ""               # a local Hugging Face Qwen2.5-VL directory
  c.model.dtype = "float32"             # compute dtype (bfloat16 on accelerators)
  c.model.param_dtype = "float32"       # master weights
  c.model.rope_mode = "legacy"

  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})

  c.stage_order = ("sft", "eval_sft", "grpo", "eval")
  c.stages = ml_collections.ConfigDict()
  c.stages.sft = ml_collections.ConfigDict(dict(
      kind="sft", steps=120, micro_batch=16, data=_data("train", 16),
      optimizer=dict(learning_rate=3e-3, warmup_ratio=0.05, weight_decay=0.0),
      frozen=(), save_every_steps=40))
  c.stages.grpo = ml_collections.ConfigDict(dict(
      kind="grpo", rounds=40, global_batch=32, micro_batch=32, data=_data("train", 8, seed=1),
      rollout=dict(num_samples=8, max_new_tokens=128, temperature=1.0),
      objective=dict(clip_eps=0.2, dual_clip=3.0, kl_coef=0.0),
      optimizer=dict(learning_rate=2e-4, warmup_ratio=0.0, schedule="constant"),
      save_every_rounds=2))
  # Sampled (4 answers per prompt at temperature 1): the policy's expected accuracy. A model
  # this small collapses to one answer per question type under greedy decoding, which hides
  # what training changed; the paper's greedy protocol is `temperature=0.0, num_samples=1`.
  evaluation = dict(kind="eval", data=_data("heldout", 16, shuffle=False, num_epochs=1),
                    rollout=dict(num_samples=4, max_new_tokens=128, temperature=1.0))
  c.stages.eval_sft = ml_collections.ConfigDict(evaluation)
  c.stages.eval = ml_collections.ConfigDict(evaluation)
  return c
