"""The shipped configs pass `plan` (what the loop runs first: every stage typed, every reference
checked), `plan` refuses bad configs with one message naming the field, and the paper recipe
carries the numbers of Table 1 (reference/veripo_method.md §1, §6)."""

import os

import pytest

from veripo_jax.rl import loop
from veripo_jax.config_utils import ConfigError, load_config_file
from veripo_jax.data.batching import BatchSpec
from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.world import WorldConfig
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.rl.plan import plan
from veripo_jax.rl.stage import DataConfig, RunContext

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TINY, TPU_7B, GPU_3B = "tiny.py", "veripo_qwen2_5_vl_7b.py", "veripo_qwen2_5_vl_3b_gpu.py"
PIXELS_28 = 28 * 28

# Table 1, by this recipe's stage names: responses (DPO: pairs) per optimizer step, learning
# rate, and G or beta. The group-slow-search stage is split into its image and video parts.
_ACTIVATION, _SEARCH = dict(global_batch=128, lr=1e-6, G=8), dict(global_batch=64, lr=1e-6, G=8)
_ALIGN, _LATER = dict(global_batch=32, lr=5e-7, beta=0.1), dict(global_batch=64, lr=5e-7, G=8)
TABLE1 = {"activation": _ACTIVATION, "search_image": _SEARCH, "search_video": _SEARCH,
          "dpo_1": _ALIGN, "grpo_1": _LATER, "dpo_2": _ALIGN, "grpo_2": _LATER}
ROLLOUT_PROMPTS = 64
V5P_128_HOSTS = 16


def load(name, arg=None):
  return load_config_file(os.path.join(CONFIGS, name), arg)


def build_stages(cfg) -> dict:
  """name -> (kind, the stage's config dataclass), as the loop's `plan` builds them."""
  return {name: (p.kind, p.config) for name, p in plan(cfg).items()}


@pytest.fixture(scope="module", params=(TINY, TPU_7B, GPU_3B))
def config(request):
  cfg = load(request.param)
  return cfg, build_stages(cfg)


def test_stages_build_with_valid_buckets(config):
  cfg, stages = config
  assert len(set(cfg.stage_order)) == len(cfg.stage_order)
  for name, (kind, stage) in stages.items():
    data = getattr(stage, "data", None)
    if data is not None:          # BatchSpec checks its buckets only when a loader starts
      BatchSpec(batch_size=data.batch_size, prompt_buckets=data.prompt_buckets,
                response_buckets=data.response_buckets, patch_buckets=data.patch_buckets)
    section = cfg.stages[name]
    assert "pairs" not in section or kind == "dpo", f"{name}: pairs on a {kind} stage"
    assert isinstance(section.get("hands_off", False), bool), name


def test_references_point_to_earlier_stages(config):
  cfg, stages = config
  order = list(cfg.stage_order)

  def earlier(name, ref, kinds, what):
    assert ref in order[:order.index(name)], f"{name}.{what}={ref!r}: not an earlier stage"
    assert stages[ref][0] in kinds, f"{name}.{what}={ref!r} is a {stages[ref][0]} stage"
    return stages[ref][1]

  for name, (kind, stage) in stages.items():
    section = cfg.stages[name]
    init = section.get("init", "")
    if init not in ("", "fresh"):
      earlier(name, init, ("sft", "grpo", "dpo"), "init")
    if kind == "verifier":
      earlier(name, stage.rollouts_from, ("grpo",), "rollouts_from")
      if stage.judge.from_stage:
        earlier(name, stage.judge.from_stage, ("sft", "grpo", "dpo"), "judge.from_stage")
    if kind == "dpo":
      verifier = earlier(name, section.pairs, ("verifier",), "pairs")
      # The paper's DPO stages read the split of the rollouts their pairs come from and encode
      # the prompts as the sampler saw them.
      source = stages[verifier.rollouts_from][1].data
      assert (stage.data.split, stage.data.dataset_dir, stage.data.template, stage.data.vision
              ) == (source.split, source.dataset_dir, source.template, source.vision), name
    if kind == "judge_eval":
      for ref in stage.evals:
        earlier(name, ref, ("eval",), "evals")
      if stage.judge.from_stage:
        judge = earlier(name, stage.judge.from_stage, ("sft",), "judge.from_stage")
        # Independent: no verifier builds pairs with it, and it learned from other examples.
        for other, (other_kind, other_stage) in stages.items():
          if other_kind == "verifier" and other_stage.judge.from_stage:
            assert other_stage.judge.from_stage != stage.judge.from_stage, (name, other)
            training = stages[other_stage.judge.from_stage][1].data
            assert (training.split, training.seed) != (judge.data.split, judge.data.seed)
    if kind == "grpo":
      for ref in stage.discard_from:
        verifier = earlier(name, ref, ("verifier",), "discard_from")
        source = stages[verifier.rollouts_from][1].data
        assert (stage.data.split, stage.data.dataset_dir) == (source.split, source.dataset_dir)


def test_tpu_recipe_is_table_1():
  cfg = load(TPU_7B)
  stages = build_stages(cfg)
  kinds = [stages[n][0] for n in cfg.stage_order]
  assert kinds == ["grpo"] * 3 + ["verifier", "dpo", "grpo"] * 2 + ["benchmark"]
  assert cfg.data.source == "tfds" and cfg.model.checkpoint == cfg.data.tokenizer_dir
  assert (cfg.model.dtype, cfg.model.param_dtype) == ("bfloat16", "float32")
  for name, row in TABLE1.items():
    kind, s = stages[name]
    opt = s.optimizer
    assert opt.learning_rate == row["lr"], name
    assert (opt.b1, opt.b2, opt.warmup_ratio) == (0.9, 0.95, 0.03), name
    assert s.objective.remat, name
    if kind == "dpo":
      assert s.data.batch_size * V5P_128_HOSTS == row["global_batch"], name
      assert s.objective.beta == row["beta"], name
      continue
    assert s.global_batch == row["global_batch"], name
    assert s.data.batch_size * V5P_128_HOSTS == ROLLOUT_PROMPTS, name
    assert (s.rollout.num_samples, s.rollout.temperature, s.rollout.max_new_tokens) == (
        row["G"], 1.0, 4096), name
    assert (s.objective.clip_eps, s.objective.dual_clip, s.objective.kl_coef) == (0.2, 3.0, 0.0)
    v = s.data.vision
    assert (v.fps, v.min_frames, v.max_frames, v.max_pixels) == (2.0, 4, 16, 128 * PIXELS_28)
    # Later GRPO stages leave out what every verifier so far discarded.
    iteration = int(name[-1]) if name.startswith("grpo_") else 0
    assert s.discard_from == tuple(f"verifier_{i}" for i in range(1, iteration + 1)), name
  # One epoch per stage: 70k reasoning-activation examples, 24k video QA, in rounds of 64.
  assert stages["activation"][1].rounds == 70_000 // ROLLOUT_PROMPTS
  assert stages["search_video"][1].rounds == 24_000 // ROLLOUT_PROMPTS
  for name in ("verifier_1", "verifier_2"):
    v = stages[name][1]
    assert (v.discard_fraction, v.heldout_split, v.verifier.max_reasoning_tokens) == (
        0.8, "", 4096)
    assert v.judge.checkpoint and not v.judge.from_stage
  e = stages["benchmarks"][1]                      # the authors' evaluation protocol
  assert set(e.question_files()) == {"vsi_bench", "mmvu", "tomato", "lvbench", "video_mme"}
  assert (e.template, e.max_new_tokens, e.repetition_penalty, e.fps) == ("veripo", 4096, 1.05, 0)
  assert (e.max_frames, e.max_pixels, e.batch_size) == (128, 256 * PIXELS_28, ROLLOUT_PROMPTS // 2)


def test_tpu_slices_keep_the_global_batches():
  big = build_stages(load(TPU_7B, "v5p-256"))      # 32 hosts
  assert big["activation"][1].data.batch_size * 32 == ROLLOUT_PROMPTS
  assert big["dpo_1"][1].data.batch_size * 32 == 32
  with pytest.raises(ValueError, match="does not split over 64 hosts"):
    load(TPU_7B, "v5p-512")
  with pytest.raises(ValueError, match="v5p slice"):
    load(TPU_7B, "v4-8")


@pytest.mark.parametrize("tpu,chips,hosts", [("v5p-128", 64, 16), ("v5p-256", 128, 32)])
def test_the_72b_variant_is_the_same_recipe_with_half_the_rows_a_shard(tpu, chips, hosts):
  """Same stages and Table 1 batches; its GRPO and DPO micro-batches hold at most 2 sequences
  and 1 pair a batch shard, half the 7B's on v5p-128 (there the 7B's DPO micro-batch would
  need 95.2 of 95.7 GiB a chip, compile_check); the activation stage's one long document a
  shard stays, but its prompts stop at 8k tokens (a 20k-token sequence a shard: 114 GiB a chip
  on v5p-128)."""
  seven, big = load(TPU_7B, tpu), load(TPU_7B, f"72b-{tpu}")
  assert (seven.model.preset, big.model.preset) == ("7b", "72b")
  assert big.model.checkpoint.endswith("Qwen2.5-VL-72B-Instruct")
  planned, reference = (plan(big, num_devices=chips, num_hosts=hosts),
                        plan(seven, num_devices=chips, num_hosts=hosts))
  assert list(planned) == list(reference)
  for name, stage in planned.items():
    mine, theirs = stage.config, reference[name].config
    if stage.kind in ("grpo", "dpo"):
      assert mine.data.batch_size == theirs.data.batch_size, name
      per_shard = 1 if name == "activation" or stage.kind == "dpo" else 2
      assert mine.micro_batch == min(per_shard * hosts, theirs.micro_batch), name
  assert planned["activation"].config.data.prompt_buckets[-1] == 8192
  assert planned["search_video"].config.data.prompt_buckets[-1] == 4096
  with pytest.raises(ValueError, match="does not split over 64 hosts.*supported slices: "
                     "72b-v5p-128, 72b-v5p-256"):
    load(TPU_7B, "72b-v5p-512")


def test_only_the_activation_stage_reads_long_prompts():
  """Four 20k-token sequences a batch shard would need 109 GiB a chip (compile_check, 7B on
  v5p-128): the stages of four-sequence micro-batches stop at 4096-token prompts, which every
  image and 16-frame video prompt fits (longer ones are skipped and counted); the activation
  stage's long documents (one a shard) keep 16,384."""
  for name, stage in plan(load(TPU_7B)).items():
    if stage.kind in ("grpo", "dpo"):
      want = 16384 if name == "activation" else 4096
      assert stage.config.data.prompt_buckets[-1] == want, name


def test_gpu_recipe_keeps_table_1_but_sizes():
  cfg = load(GPU_3B)
  gpu, tpu = build_stages(cfg), build_stages(load(TPU_7B))
  assert cfg.stage_order == load(TPU_7B).stage_order
  assert (cfg.mesh.data, cfg.mesh.tensor) == (1, 1)
  for name, row in TABLE1.items():
    g, t = gpu[name][1], tpu[name][1]
    assert g.optimizer == t.optimizer and g.objective == t.objective, name
    if gpu[name][0] == "grpo":
      assert g.global_batch == row["global_batch"] and g.rollout.num_samples == row["G"], name
      assert g.micro_batch == row["G"]              # one group: the least memory GRPO allows
    else:
      assert g.data.batch_size == row["global_batch"]  # one host: pairs per step


def test_shared_references_follow_overrides():
  cfg = load(TPU_7B)
  cfg.model.checkpoint = "/ckpt"
  cfg.stages.verifier_2.judge.checkpoint = "/judge"
  assert cfg.data.tokenizer_dir == "/ckpt"
  assert cfg.stages.verifier_1.judge.checkpoint == "/judge"


def test_a_stage_dataset_dir_overrides_the_runs():
  """The eval stages read another built dataset than the run's (DataConfig.dataset_dir)."""
  ctx = RunContext(workdir="", mesh=None, model_config=None, tokenizer=None, tokenizer_dir="",
                   dataset_dir="/run", writer=None, guard=None)
  assert ctx.data_dir(DataConfig()) == "/run"
  assert ctx.data_dir(DataConfig(dataset_dir="/eval")) == "/eval"


def test_a_stage_model_of_its_own_needs_a_fresh_start(tmp_path):
  cfg = load(TINY)
  tokenizer = _world_tokenizer(tmp_path)
  ctx = RunContext(workdir=str(tmp_path), mesh=None,
                   model_config=loop.policy_config(cfg, "", tokenizer), tokenizer=tokenizer,
                   tokenizer_dir="", dataset_dir="", writer=None, guard=None)
  judge = loop.stage_model_config(cfg, "judge", ctx)
  assert judge.text.hidden_size == 64 < ctx.model_config.text.hidden_size
  assert judge.video_token_id == ctx.model_config.video_token_id     # fitted to the tokenizer
  assert loop.stage_model_config(cfg, "sft", ctx) is ctx.model_config
  cfg.stages.judge.init = "/some/checkpoint"
  with pytest.raises(ConfigError, match=r"stages.judge.model: .*init='fresh'"):
    plan(cfg)
  cfg.stages.judge.init = "fresh"
  cfg.stages.judge.model.txt = {}
  with pytest.raises(ConfigError, match=r"stages.judge.model: unknown field\(s\) \['txt'\]"):
    plan(cfg)


def _world_tokenizer(tmp_path):
  paths = build_world(tmp_path / "world", seed=0, split_sizes={"train": 1},
                      world=WorldConfig(tokenizer_corpus_examples=50))
  return load_tokenizer(paths.tokenizer_dir)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.stages.grpo, "roundz", 2),
     "config.stages.grpo: unknown field(s) ['roundz'] (did you mean 'rounds'?)"),
    (lambda c: setattr(c.stages.judge_eval, "evals", ("eval_sft", "eval_grpp")),
     "config.stages.judge_eval.evals: 'eval_grpp' is not an earlier stage (did you mean "
     "'eval_grpo'?)"),
    (lambda c: setattr(c.stages.dpo, "pairs", "grpo"),
     "config.stages.dpo.pairs: 'grpo' is a grpo stage; expected verifier"),
    (lambda c: setattr(c.stages.verifier, "rollouts_from", "grpo_2"),
     "config.stages.verifier.rollouts_from: 'grpo_2' is not an earlier stage"),
    (lambda c: setattr(c.stages.dpo.data, "template", "judge"),
     "config.stages.dpo.data.template: 'judge', but the stage encodes the pairs' prompts as "
     "stage grpo, which has 'synthetic_think'"),
    (lambda c: setattr(c.stages.grpo_2.data, "split", "heldout"),
     "config.stages.grpo_2.data.split: 'heldout', but the stage reads the prompts it discards "
     "by index from stage grpo, which has 'train'"),
    (lambda c: setattr(c.stages.grpo_2, "kind", "grpoo"),
     "config.stages.grpo_2.kind: unknown 'grpoo' (did you mean 'grpo'?)"),
    (lambda c: setattr(c, "stage_order", ("sft", "eval_sfd")),
     "config.stage_order: 'eval_sfd' is not in config.stages (did you mean 'eval_sft'?)"),
    (lambda c: setattr(c.mesh, "fsdp", 0), "config.mesh.fsdp: a positive integer or -1, not 0"),
    (lambda c: setattr(c, "sharding_rules", (("mlpp", "tensor"),)),
     "config.sharding_rules: unknown logical axis 'mlpp'"),
    (lambda c: setattr(c.data, "source", "synthetc"),
     "config.data.source: unknown 'synthetc' (did you mean 'synthetic'?)"),
    (lambda c: setattr(c.data, "synthetic", False),
     "config.data: unknown field(s) ['synthetic']; known: ['dataset_dir', 'source',"),
    (lambda c: setattr(c.model, "preset", "tinyy"),
     "config.model.preset: unknown 'tinyy' (did you mean 'tiny'?)"),
    (lambda c: setattr(c.model, "family", "qwen25_vl"),
     "config.model.family: unknown 'qwen25_vl' (did you mean 'qwen2_5_vl'?)"),
    (lambda c: setattr(c.model, "attention", "flash"),
     "config.model.attention: unknown 'flash'; known: ['auto', 'xla', 'splash', 'cudnn']"),
    (lambda c: setattr(c.model, "remat_policy", "dots_saveabel"),
     "config.model.remat_policy: unknown 'dots_saveabel'"),
    (lambda c: setattr(c.stages.grpo, "pairs", "verifier"),
     "config.stages.grpo.pairs: a grpo stage reads no pairs"),
])
def test_plan_refuses_with_one_message_naming_the_field(change, message):
  """Whichever stage it is in (the last one included), a mistake stops `plan`, which the loop
  runs before the first stage."""
  cfg = load(TINY)
  change(cfg)
  with pytest.raises(ConfigError) as error:
    plan(cfg)
  assert str(error.value).startswith(message), str(error.value)
  assert "\n" not in str(error.value)


def test_a_config_error_stops_the_run_before_anything_is_written(tmp_path):
  cfg = load(TINY)
  cfg.stages.judge_eval.judge_max_tokenz = 3
  with pytest.raises(ConfigError, match="judge_max_tokenz"):
    loop.run(cfg, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("hardware", ["gpu", "v5p-8"])
def test_eval_config_plans_and_its_eval_section_is_the_stage(hardware):
  cfg = load("eval_qwen2_5_vl_7b.py", hardware)
  cfg.eval.video_root = "/videos"                  # what --config.eval.video_root=... sets
  cfg.eval.benchmarks = "vsi_bench,mmvu"
  cfg.model.checkpoint = "/ckpt"
  stage = build_stages(cfg)["benchmarks"][1]
  assert stage.video_root == "/videos" and list(stage.question_files()) == ["vsi_bench", "mmvu"]
  assert (stage.repetition_penalty, stage.max_new_tokens, stage.template) == (1.05, 4096,
                                                                              "veripo")
  assert cfg.data.tokenizer_dir == "/ckpt"
  cfg.eval.benchmarks = "vsi_bench,mmvuu"
  with pytest.raises(ConfigError, match="unknown 'mmvuu'"):
    plan(cfg)
