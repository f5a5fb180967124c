"""VerIPO's training recipe (reference/veripo_method.md §1, the paper's Table 1) for
Qwen2.5-VL-7B-Instruct on a Cloud TPU v5p-128 slice: 64 chips on 16 hosts of 4 chips each.

  tpu_scripts/launch.sh --config=configs/veripo_qwen2_5_vl_7b.py --workdir=/mnt/shared/veripo \
      --config.model.checkpoint=/path/to/Qwen2.5-VL-7B-Instruct \
      --config.data.dataset_dir=/path/to/tfds/veripo_train/VERSION \
      --config.stages.benchmarks.video_root=/path/to/benchmark/videos \
      --config.stages.verifier_1.judge.checkpoint=/path/to/Qwen2.5-7B-Instruct

Setting model.checkpoint also sets data.tokenizer_dir (the checkpoint holds the tokenizer), one
verifier's judge checkpoint sets both. Every host
reads the checkpoints and datasets, and the workdir must be one directory they all see (a shared
mount): stages hand policies on by path. Another v5p slice:
`--config=configs/veripo_qwen2_5_vl_7b.py:v5p-256` (per-host batch sizes follow the host count,
so the global batches stay Table 1's); Qwen2.5-VL-72B-Instruct: `:72b-v5p-128` or `:72b-v5p-256`
(override model.checkpoint as for the 7B).

Stages: reasoning activation GRPO -> group-slow-search GRPO on images, then on video QA ->
[verifier -> DPO (pair-fast-align) -> GRPO on video QA] x 2 (the paper's Figure 1C) -> the
authors' evaluation protocol on the five benchmarks of §6 (the `benchmark` stage kind, the code
path of configs/eval_qwen2_5_vl_7b.py: their prompts, greedy with repetition penalty 1.05, their
scoring; question files shipped in veripo_jax/eval/questions, videos under `video_root`). The paper's group-slow-search stage is one GRPO stage
over images and video QA together; here it is two stages in a row (images, then video QA)
because a verifier names prompts by their position in the split its GRPO stage read: the DPO
stage re-reads the prompts of its pairs from that split, and the next GRPO stage leaves the
discarded easy prompts out of its own split by the same positions. With the video QA rollouts in
a stage of their own, the pairs are "rollouts of the video QA" (Table 1) and all three stages
of an iteration read the one split `video_qa`.

Data: build one Video-R1-format dataset with a split per Table 1 source, e.g.

  python -m veripo_jax.data.build_dataset --format=video_r1 --name=veripo_train \
      --split=long_document=long_document.jsonl --split=math_text=math_text.jsonl \
      --split=reasoning_image=reasoning_image.jsonl --split=science_image=science_image.jsonl \
      --split=spatial_image=spatial_image.jsonl --split=general_image=general_image.jsonl \
      --split=video_qa=video_qa.jsonl --media_root=/data/media --data_dir=/data/tfds

and point `data.dataset_dir` at the `dataset:` directory the build prints. A stage reading several sources names them as one TFDS split
expression ("math_text+reasoning_image").
"""

import ml_collections

# Placeholders, overridden on the command line (checkpoints are read from local directories);
# shared references tie the copies together (see the docstring).
CHECKPOINT = "/path/to/Qwen2.5-VL-7B-Instruct"
CHECKPOINT_72B = "/path/to/Qwen2.5-VL-72B-Instruct"
TRAIN_DATASET_DIR = "/path/to/tfds/veripo_train/VERSION"
BENCHMARK_VIDEOS = "/path/to/benchmark/videos"   # VSI-Bench/..., MMVU/..., TOMATO/..., ...
# The judge of the Rollout-Aware Verifier: the paper says "a small LLM" and does not name it;
# any local Qwen2/Qwen2.5 text (or Qwen2.5-VL) instruct checkpoint serves.
JUDGE_CHECKPOINT = "/path/to/Qwen2.5-7B-Instruct"

# Table 1 data sizes (examples, as the paper rounds them); GRPO rounds cover one epoch.
EXAMPLES = {"long_document": 1_000, "math_text": 30_000, "reasoning_image": 39_000,
            "science_image": 4_000, "spatial_image": 9_000, "general_image": 10_000,
            "video_qa": 24_000}
# Table 1 per stage: responses per optimizer step (pairs for DPO), learning rate.
ROLLOUT_PROMPTS = 64            # prompts per rollout round, every GRPO stage
GROUP_SIZE = 8                  # G
ACTIVATION = dict(global_batch=128, learning_rate=1e-6)
SLOW_SEARCH = dict(global_batch=64, learning_rate=1e-6)
FAST_ALIGN = dict(global_batch=32, learning_rate=5e-7, beta=0.1)
LATER_SEARCH = dict(global_batch=64, learning_rate=5e-7)
MAX_RESPONSE = 4096
ACTIVATION_SOURCES = ("long_document", "math_text", "reasoning_image")
# Longest prompt (tokens) of the image and video QA stages: ~1.5k at most (16 frames are 1024
# video tokens, an image at most 512); longer ones are skipped and counted. Their
# micro-batches hold several sequences a batch shard: four 20k-token sequences would need
# 109 GiB a chip (compile_check, 7B on v5p-128).
MEDIA_PROMPT = 4096
LONG_DOCUMENT_PROMPT = 16384    # the activation stage's longest prompt (7B; see PER_SHARD)
ITERATIONS = 2                  # [verifier -> DPO -> GRPO] x 2, Figure 1C
BENCHMARKS = ("vsi_bench", "mmvu", "tomato", "lvbench", "video_mme")   # §6

# Per model preset: sequences a batch shard in a GRPO micro-batch (other than the activation
# stage's: one long document a shard), pairs a shard in a DPO micro-batch, and the activation
# stage's longest prompt. The 72B's activations at one 20k-token sequence a shard need 114 GiB
# a chip (compile_check on v5p-128), so its long documents stop at 8k tokens.
PER_SHARD = {"7b": dict(grpo_rows=4, dpo_pairs=2, long_prompt=LONG_DOCUMENT_PROMPT),
             "72b": dict(grpo_rows=2, dpo_pairs=1, long_prompt=8192)}

_PIXELS_28 = 28 * 28


def _split(*sources):
  return "+".join(sources)


def _rounds(sources, prompts_per_round):
  """One epoch: rollout rounds of `prompts_per_round` prompts over the sources' examples."""
  return sum(EXAMPLES[s] for s in sources) // prompts_per_round


def _per_host(total, hosts, what):
  if total % hosts:
    raise ValueError(f"{what}={total} does not split over {hosts} hosts")
  return total // hosts


def _train_data(split, batch_size, seed, max_response, longest_prompt=MEDIA_PROMPT):
  """A training stage's data: §1 video sampling (2 fps, 4-16 frames, 128·28·28 pixels per
  frame), images up to 512·28·28 pixels [Video-R1's --max_pixels 401408: the paper is silent],
  the Video-R1 THINK prompt, prompts up to `longest_prompt` tokens (longer ones are skipped and
  counted). DPO re-encodes its pairs' prompts with these same settings, so it shares them with
  the GRPO stage whose rollouts it trains on."""
  shorter = tuple(b for b in (64, 128, 256, 512, 1024, 2048) if b < max_response)
  return dict(
      split=split, batch_size=batch_size, seed=seed, template="video_r1_think",
      vision=dict(fps=2.0, min_frames=4, max_frames=16, max_pixels=128 * _PIXELS_28,
                  image_max_pixels=512 * _PIXELS_28),
      # A 16-frame video is 1024 tokens, with the question about 1.4k: the 1536 bucket.
      prompt_buckets=tuple(b for b in (256, 512, 1024, 1536, 2048, 4096, 8192, 16384)
                           if b <= longest_prompt),
      # A reflection pair's chosen response is up to max_reasoning_tokens of reasoning plus
      # its tags and answer: the bucket above the limit keeps it from padding to twice that.
      response_buckets=shorter + (max_response, max_response + 256))


def recipe(*, checkpoint, preset, mesh, hosts, prompts_per_round, activation_micro_batch,
           micro_batch, dpo_micro_batch, max_response, eval_batch_size, remat,
           save_every_rounds, judge, activation_sources=ACTIVATION_SOURCES,
           long_document_prompt=LONG_DOCUMENT_PROMPT):
  """The whole loop as stages; the model and the hardware-dependent sizes are arguments.

  hosts: JAX processes (`data.batch_size` counts prompts or pairs per host).
  prompts_per_round: prompts per GRPO rollout round, all hosts together (Table 1: 64).
  activation_micro_batch, micro_batch: responses per accumulated micro-batch in the reasoning
    activation stage (long documents) and in the other GRPO stages.
  dpo_micro_batch: pairs per accumulated DPO micro-batch (each pair is two rows).
  judge: the verifier's JudgeConfig fields; both verifiers share its `checkpoint`.
  activation_sources: the splits of the reasoning activation stage.
  long_document_prompt: its longest prompt in tokens (the other stages': MEDIA_PROMPT).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.compilation_cache_dir = ""           # "" = WORKDIR/compilation_cache (gs:// paths work)
  checkpoint = ml_collections.FieldReference(checkpoint)
  judge = dict(judge, checkpoint=ml_collections.FieldReference(judge["checkpoint"]))

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"
  c.data.dataset_dir = TRAIN_DATASET_DIR
  c.data.tokenizer_dir = checkpoint

  c.model = ml_collections.ConfigDict()
  c.model.preset = preset                # unused: the checkpoint's config.json decides
  c.model.text = ml_collections.ConfigDict()
  c.model.vision = ml_collections.ConfigDict()
  c.model.checkpoint = checkpoint
  c.model.dtype = "bfloat16"             # compute
  # fp32 master weights: a 5e-7 step on a weight of 1e-2 is 5e-5 of it, below bf16's
  # resolution (2^-8), so bf16 weights would not move.
  c.model.param_dtype = "float32"
  c.model.rope_mode = "legacy"
  # The 28 decoder layers in one lax.scan: unrolled, remat'd layers still grow memory 1.3 GiB a
  # layer on v5p (XLA schedules every recomputation early) and compile time with depth.
  c.model.scan_layers = True
  c.model.remat_policy = "nothing_saveable"     # or dots_saveable, ... (remat=True stages)
  c.model.attention = "auto"            # splash on TPU, cuDNN on GPU, XLA on CPU; or a name

  c.mesh = ml_collections.ConfigDict(mesh)
  c.sharding_rules = ()                 # overrides of parallel.sharding.DEFAULT_RULES, by axis
  c.stages = ml_collections.ConfigDict()
  rollout_prompts = _per_host(prompts_per_round, hosts, "prompts_per_round")
  dpo_pairs = _per_host(FAST_ALIGN["global_batch"], hosts, "DPO global batch")

  def grpo(name, sources, table, seed, discard_from=()):
    c.stages[name] = ml_collections.ConfigDict(dict(
        kind="grpo", rounds=_rounds(sources, prompts_per_round),
        global_batch=table["global_batch"],
        micro_batch=activation_micro_batch if name == "activation" else micro_batch,
        data=_train_data(_split(*sources), rollout_prompts, seed, max_response,
                         long_document_prompt if name == "activation" else MEDIA_PROMPT),
        rollout=dict(num_samples=GROUP_SIZE, max_new_tokens=max_response, temperature=1.0,
                     top_p=1.0, top_k=0),
        objective=dict(clip_eps=0.2, dual_clip=3.0, kl_coef=0.0, remat=remat),
        optimizer=_optimizer(table["learning_rate"]),
        # pi_old from a training-path forward pass, as OpenRLHF does, rather than the
        # sampler's bf16 decode-path log-probs (one extra forward pass per round).
        recompute_old_logprobs=True, discard_from=tuple(discard_from),
        save_every_rounds=save_every_rounds))

  # Reasoning activation, with Table 1's 64 prompts a round: 70k examples / 64 = 1093 rounds
  # of 64 x 8 = 512 responses, 4 optimizer steps of 128 each (4372 steps).
  grpo("activation", activation_sources, ACTIVATION, seed=1)
  # Group-slow-search: 23k images / 64 = 359 rounds, then 24k videos / 64 = 375 rounds, each
  # of 8 steps of 64 responses.
  grpo("search_image", ("science_image", "spatial_image", "general_image"), SLOW_SEARCH, seed=2)
  grpo("search_video", ("video_qa",), SLOW_SEARCH, seed=3)

  order = ["activation", "search_image", "search_video"]
  rollouts_from = "search_video"
  for i in range(1, ITERATIONS + 1):
    verifier, dpo, later = f"verifier_{i}", f"dpo_{i}", f"grpo_{i}"
    c.stages[verifier] = ml_collections.ConfigDict(dict(
        kind="verifier", rollouts_from=rollouts_from, last_rounds=0,   # every stored round
        judge=dict(judge), heldout_split="",
        verifier=dict(judge_max_tokens=8, max_reasoning_tokens=max_response,
                      max_pairs_per_prompt=2),
        discard_fraction=0.8, discard_seed=i))
    # Pair-fast-align: one pass over the verifier's pairs (steps = pairs / 32), on the
    # split the verified rollouts came from.
    c.stages[dpo] = ml_collections.ConfigDict(dict(
        kind="dpo", pairs=verifier, epochs=1.0, micro_batch=dpo_micro_batch, share_prompt=True,
        data=_train_data("video_qa", dpo_pairs, 10 + i, max_response),
        objective=dict(beta=FAST_ALIGN["beta"], remat=remat),
        optimizer=_optimizer(FAST_ALIGN["learning_rate"]), save_every_steps=100))
    # Group-slow-search on video QA without the easy prompts every verifier so far dropped
    # (80% of those all G rollouts answered right). One pass over the full split (375 rounds
    # of 64), so the last rounds start a second pass over what the discard left: the paper
    # does not give these stages' lengths.
    grpo(later, ("video_qa",), LATER_SEARCH, seed=20 + i,
         discard_from=[f"verifier_{j}" for j in range(1, i + 1)])
    order += [verifier, dpo, later]
    rollouts_from = later

  # The authors' evaluation protocol (configs/eval_qwen2_5_vl_7b.py's stage) on the final policy.
  c.stages.benchmarks = ml_collections.ConfigDict(dict(
      kind="benchmark", benchmarks=",".join(BENCHMARKS), video_root=BENCHMARK_VIDEOS,
      batch_size=eval_batch_size, max_new_tokens=4096, repetition_penalty=1.05,
      max_frames=128, max_pixels=256 * _PIXELS_28,
      # 128 frames are 16384 video tokens; the question and template fit the next bucket.
      prompt_buckets=(1024, 2048, 4096, 8192, 16384, 17408, 18432)))
  order.append("benchmarks")
  c.stage_order = tuple(order)
  return c


def _optimizer(learning_rate):
  """AdamW (0.9, 0.95), 3% warmup [MM-EUREKA]; cosine to 0.1·lr, no weight decay, clip 1.0
  (OpenRLHF's defaults, which MM-EUREKA keeps)."""
  return dict(learning_rate=learning_rate, warmup_ratio=0.03, b1=0.9, b2=0.95,
              schedule="cosine", end_lr_ratio=0.1, weight_decay=0.0, max_grad_norm=1.0)


def get_config(slice_name="v5p-128"):
  """`slice_name`: a v5p slice name; v5p names count TensorCores, two per chip, four chips a
  host. `72b-` before it (`:72b-v5p-128`) gives the same recipe for Qwen2.5-VL-72B-Instruct.

  Offered: v5p-128 (the default) and v5p-256, with Table 1's global batches and each chip's
  share of a micro-batch as on v5p-128 (or less). Larger slices are refused: per-host batch
  sizes cannot keep Table 1's 32 DPO pairs a step (v5p-512: 64 hosts) or 64 prompts a round
  (v5p-1024: 128 hosts), and a batch the hosts or batch shards do not divide would have to
  shrink the global batch or be replicated. Smaller slices are not sized here. The 72B
  variant is offered on both, with at most 2 sequences (GRPO) and 1 pair (DPO) a batch shard
  in its micro-batches, half the 7B's on v5p-128: with the 7B's, its DPO micro-batch needs
  95.2 of a v5p chip's 95.7 GiB (`compile_check`; README, Paper scale).
  """
  preset, tpu = ("72b", slice_name[4:]) if slice_name.startswith("72b-") else ("7b", slice_name)
  supported = ("v5p-128", "v5p-256")
  if not tpu.startswith("v5p-") or not tpu[len("v5p-"):].isdigit():
    raise ValueError(f"expected a v5p slice name like v5p-128, got {tpu!r}; supported slices: "
                     f"{', '.join(supported)}")
  chips = int(tpu[len("v5p-"):]) // 2
  hosts = max(1, chips // 4)
  if tpu not in supported:
    dpo_pairs = FAST_ALIGN["global_batch"]
    batches = ((f"DPO global batch of {dpo_pairs} pairs", dpo_pairs),
               (f"{ROLLOUT_PROMPTS} prompts a round", ROLLOUT_PROMPTS))
    split = [what for what, n in batches if n % hosts]
    why = (f"Table 1's {split[0]} does not split over {hosts} hosts (per-host batch sizes)"
           if split else "the recipe's micro-batches are not sized for it")
    raise ValueError(f"{slice_name}: {why}; supported slices: "
                     f"{', '.join(f'{preset}-{t}' if preset != '7b' else t for t in supported)}")
  # Mesh: tensor=4 over each host's 4 chips (the innermost mesh axis), fsdp over the hosts.
  # - Decoding reads every weight at every token; with tensor=4 a chip gathers a quarter of
  #   the (fp32, 33 GB) weights instead of all of them.
  # - The batch axis is data x fsdp = one shard a host (16 on v5p-128): rollouts of 512
  #   responses are 32 a shard, and every batch must be a multiple of the shards (`plan`
  #   refuses one that is not: it would be replicated); with tensor=1 a batch would have to
  #   be a multiple of 64.
  # - Qwen2.5-VL-7B divides by 4 everywhere: 28 heads, 4 KV heads (the ceiling: the KV cache
  #   shards by KV head), MLP 18944, vocab 152064, ViT 16 heads and MLP 3420.
  # - fp32 weights plus Adam moments of the trainable (text) part, about 33 + 61 GB, shard
  #   over all 64 chips: 1.5 GB a chip, leaving the HBM (95 GB) to KV caches and activations.
  shards = hosts
  sizes = PER_SHARD[preset]
  return recipe(
      checkpoint=CHECKPOINT_72B if preset == "72b" else CHECKPOINT, preset=preset,
      mesh={"data": 1, "fsdp": -1, "tensor": min(4, chips)},
      hosts=hosts, prompts_per_round=ROLLOUT_PROMPTS,
      # Per batch shard (PER_SHARD), 7B on v5p-128: micro-batches of 4 sequences of up to
      # 5.6k tokens (64 responses on 16 shards; at most Table 1's 64 a step), remat storing
      # only each layer's input; the activation stage's long documents (prompts up to 16k
      # tokens, so 20k-token sequences) one a shard. DPO: 2 pairs a shard, at most the 32
      # pairs of a step.
      activation_micro_batch=shards,
      micro_batch=min(sizes["grpo_rows"] * shards, SLOW_SEARCH["global_batch"],
                      LATER_SEARCH["global_batch"]),
      dpo_micro_batch=min(sizes["dpo_pairs"] * shards, FAST_ALIGN["global_batch"]),
      long_document_prompt=sizes["long_prompt"],
      # Evaluation: prompts of up to 17k tokens (128 frames), 2 a batch shard (32 on v5p-128).
      max_response=MAX_RESPONSE, eval_batch_size=2 * shards, remat=True, save_every_rounds=10,
      # JetStream serves the judge on one chip of host 0 (serving/engine.py) while the
      # verifier runs there: a 7B judge in bf16 is 15 GB, and 64 slots of 8k-token prompts
      # (57 KB of cache a token) 30 GB, within a v5p chip's 95 GB.
      judge=dict(checkpoint=JUDGE_CHECKPOINT, dtype="bfloat16", max_concurrent_decodes=64,
                 max_prefill_length=8192, max_decode_length=16, timeout_s=120.0,
                 max_workers=64))
