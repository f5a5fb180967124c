"""Embedded default: a tiny random Qwen2.5-VL generating from random video prompts on CPU.

  python -m veripo_jax.main --config=configs/tiny.py --workdir=runs/tiny
  python -m veripo_jax.main --config=configs/tiny.py --config.model.checkpoint=/path/to/hf_dir ...
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("generate_demo",)

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"          # used when no checkpoint is given (random weights)
  c.model.checkpoint = ""          # a local Hugging Face Qwen2.5-VL directory
  c.model.dtype = "float32"
  c.model.rope_mode = "legacy"

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1

  c.generate = ml_collections.ConfigDict()
  c.generate.batch_size = 4
  c.generate.prompt_tokens = 32     # text tokens around the video span
  c.generate.video_frames = 4
  c.generate.video_height = 56
  c.generate.video_width = 84
  c.generate.max_new_tokens = 32
  c.generate.num_samples = 2
  c.generate.temperature = 1.0
  c.generate.top_p = 1.0
  c.generate.top_k = 0
  c.generate.repeats = 3
  return c
