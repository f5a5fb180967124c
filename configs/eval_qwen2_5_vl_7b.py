"""Evaluate a local Qwen2.5-VL-7B-shaped checkpoint (Qwen2.5-VL-7B-Instruct, VerIPO-7B) with the
VerIPO authors' protocol (reference/veripo_eval_protocol.md): their OPTION / NUMBER prompts,
greedy decoding with repetition penalty 1.05 and up to 4096 new tokens, frames at 2 fps (TOMATO
4), at most 128 frames of at most 256·28·28 pixels, and their scoring rules.

  python -m veripo_jax.main --config=configs/eval_qwen2_5_vl_7b.py --workdir=runs/eval_7b \
      --config.model.checkpoint=/path/to/VerIPO-7B --config.eval.video_root=/data/videos \
      --config.eval.benchmarks=vsi_bench,mmvu

The five question files ship with the package (`veripo_jax/eval/questions`); their video paths
(e.g. `VSI-Bench/arkitscenes/45260905.mp4`) are read under `eval.video_root`. Items whose video
is absent are counted and left out; the report states each benchmark's coverage. Other files
in the shipped format or Video-R1's (e.g. Video-R1's VideoMMMU eval JSON) join with
`--config.eval.files=videommmu=/path/to/eval_videommmu.json`.

A judge LLM measures the inconsistency rate of the paper's Figure 1C beside the rule's:
`--config.eval.judge.checkpoint=/path/to/Qwen2.5-7B-Instruct` (served by JetStream on this
host; `eval.judge.address=host:port` uses a running server instead). Use a different judge
from the one training built its pairs with.

Hardware: `get_config("gpu")` (default: one GPU), or a TPU slice name, e.g.
`--config=configs/eval_qwen2_5_vl_7b.py:v5p-8`. Outputs: WORKDIR/stages/benchmarks/
predictions.jsonl (appended per batch; a re-run resumes) and eval_report.{md,json,png}.
"""

import ml_collections

CHECKPOINT = "/path/to/Qwen2.5-VL-7B-Instruct"
BENCHMARKS = "vsi_bench,mmvu,tomato,lvbench,video_mme"


def get_config(hardware="gpu"):
  if hardware == "gpu":
    mesh, batch_size = {"data": 1, "fsdp": 1, "tensor": 1}, 4
  elif hardware.startswith(("v4-", "v5p-", "v5e-", "v5litepod-", "v6e-")):
    # Weights replicated within `tensor` groups of 4 chips, prompts over the rest; 4 prompts of
    # up to 17k tokens (128 frames) a batch shard.
    mesh, batch_size = {"data": -1, "fsdp": 1, "tensor": 4}, 16
  else:
    raise ValueError(f"hardware: 'gpu' or a TPU slice name like v5p-8, got {hardware!r}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  checkpoint = ml_collections.FieldReference(CHECKPOINT)
  c.data = ml_collections.ConfigDict(dict(source="tokenizer"))
  c.data.tokenizer_dir = checkpoint      # the checkpoint holds the tokenizer

  c.model = ml_collections.ConfigDict()
  c.model.family = "qwen2_5_vl"
  c.model.preset = "7b"                  # unused: the checkpoint's config.json decides
  c.model.checkpoint = checkpoint
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "bfloat16"
  c.model.rope_mode = "legacy"
  c.model.scan_layers = True             # one compiled layer, however deep the model
  c.model.attention = "auto"             # splash on TPU, cuDNN on GPU, XLA on CPU
  c.mesh = ml_collections.ConfigDict(mesh)
  c.sharding_rules = ()

  c.eval = ml_collections.ConfigDict(dict(
      kind="benchmark", benchmarks=BENCHMARKS, questions_dir="", files="", video_root="",
      template="veripo", batch_size=batch_size, sort_window=8, max_new_tokens=4096,
      repetition_penalty=1.05, fps=0.0, max_frames=128, max_pixels=256 * 28 * 28, max_items=0,
      prompt_buckets=(1024, 2048, 4096, 8192, 16384, 17408, 18432),
      judge=dict(checkpoint="", address="", dtype="bfloat16", max_concurrent_decodes=32,
                 max_prefill_length=8192, max_decode_length=16, timeout_s=120.0,
                 max_workers=32)))
  c.stages = ml_collections.ConfigDict()
  c.stages.benchmarks = c.eval           # one object: `--config.eval.X` sets the stage's X
  c.stage_order = ("benchmarks",)
  return c
