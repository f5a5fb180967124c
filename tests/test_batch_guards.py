"""Batches the mesh's batch shards (data x fsdp) do not divide are config errors at plan time,
naming the field and the shard count, instead of being replicated on every shard; and the 7B
recipe offers only the TPU slices whose batches split (each plans for its own chip count)."""

import os
import re

import pytest

from veripo_jax.config_utils import ConfigError, load_config_file
from veripo_jax.rl.plan import plan

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TPU_7B = "veripo_qwen2_5_vl_7b.py"


def load(name, arg=None):
  return load_config_file(os.path.join(CONFIGS, name), arg)


def tiny():
  """configs/tiny.py with every batch a multiple of 8 (its GRPO stages share a prompt row per
  group: 32 responses are 4 rows, which 8 shards do not divide)."""
  cfg = load("tiny.py")
  for name in ("grpo", "grpo_2"):
    cfg.stages[name].share_prompt = False
  return cfg


def refused(cfg, **devices) -> str:
  with pytest.raises(ConfigError) as error:
    plan(cfg, **devices)
  message = str(error.value)
  assert "\n" not in message
  return message


def test_batches_that_split_plan_and_no_device_count_checks_nothing():
  plan(tiny(), num_devices=8, num_hosts=1)
  cfg = load("tiny.py")
  plan(cfg)                                   # no device count: the batches are not checked
  plan(cfg, num_devices=1, num_hosts=1)       # one shard divides everything
  plan(cfg, num_devices=4, num_hosts=1)       # 4 group rows on 4 shards


@pytest.mark.parametrize("change, field, rows", [
    # GRPO: a micro-batch of 32 responses sharing a prompt row per group of 8 = 4 rows.
    (lambda s: setattr(s.grpo, "share_prompt", True), "grpo.micro_batch", 4),
    # ... of 4 responses (G=4), one row each.
    (lambda s: s.grpo_2.update(micro_batch=4, global_batch=32, rollout={"num_samples": 4}),
     "grpo_2.micro_batch", 4),
    # The rollout round: 12 prompts (x G = 96 responses) on 8 shards.
    (lambda s: setattr(s.grpo.data, "batch_size", 12), "grpo.data.batch_size", 12),
    # Micro-batches of 3 groups of 4 responses: 12 rows.
    (lambda s: s.grpo.update(global_batch=24, micro_batch=12, rollout={"num_samples": 4}),
     "grpo.micro_batch", 12),
    # DPO: 8 pair slots of 2 pairs a (shared) row = 4 rows; unshared, 3 pairs are 6 rows.
    (lambda s: setattr(s.dpo, "micro_batch", 8), "dpo.micro_batch", 4),
    (lambda s: s.dpo.update(share_prompt=False, pairs_per_row=1, micro_batch=3),
     "dpo.micro_batch", 6),
    # 12 prompt rows in micro-batches of 8: the last one has 4.
    (lambda s: setattr(s.dpo.data, "batch_size", 12), "dpo.data.batch_size", 4),
    # SFT, the evaluation and the benchmark protocol.
    (lambda s: setattr(s.sft, "micro_batch", 12), "sft.micro_batch", 12),
    (lambda s: setattr(s.judge.data, "batch_size", 36), "judge.data.batch_size", 4),
    (lambda s: setattr(s.eval_sft.data, "batch_size", 4), "eval_sft.data.batch_size", 4),
])
def test_a_batch_the_shards_do_not_divide_is_refused_naming_field_and_shards(change, field,
                                                                            rows):
  cfg = tiny()
  change(cfg.stages)
  plan(cfg)                                   # the config itself is valid
  message = refused(cfg, num_devices=8, num_hosts=1)
  assert message.startswith(f"config.stages.{field}: "), message
  assert f"= {rows} rows, which the 8 batch shards (mesh data=1 x fsdp=8 on 8 devices)" \
      in message, message
  # On 4 devices (data=2 x fsdp=2) the shard count in the message follows the mesh.
  cfg.mesh.update(data=2, fsdp=2, tensor=1)
  if rows % 4:
    assert "the 4 batch shards (mesh data=2 x fsdp=2 on 4 devices)" in refused(
        cfg, num_devices=4, num_hosts=1)
  # Tensor-parallel devices are not batch shards.
  cfg.mesh.update(data=1, fsdp=-1, tensor=8)
  plan(cfg, num_devices=8, num_hosts=1)


def test_per_host_batch_sizes_count_every_host():
  cfg = tiny()
  cfg.stages.grpo.data.batch_size = 4            # 4 prompts a host
  assert "= 4 rows" in refused(cfg, num_devices=8, num_hosts=1)
  plan(cfg, num_devices=8, num_hosts=2)           # 8 prompts on 2 hosts
  cfg.stages.benchmark = dict(kind="benchmark", batch_size=4)   # a global batch size
  cfg.stage_order = cfg.stage_order + ("benchmark",)
  message = refused(cfg, num_devices=8, num_hosts=2)
  assert message.startswith("config.stages.benchmark.batch_size: prompts per generate call "
                            "(all hosts) = 4 rows, which the 8 batch shards"), message


def test_a_mesh_that_does_not_fit_the_devices_is_refused():
  cfg = tiny()
  cfg.mesh.update(data=1, fsdp=1, tensor=4)
  assert refused(cfg, num_devices=8).startswith("config.mesh: mesh {'data': 1, 'fsdp': 1, "
                                                "'tensor': 4} needs 4 devices, have 8")


# --- the 7B recipe's TPU slices -----------------------------------------------------------------

OFFERED = {"v5p-128": 64, "v5p-256": 128}        # slice -> chips (4 a host)


@pytest.mark.parametrize("tpu", sorted(OFFERED))
def test_offered_7b_slices_plan_for_their_chips_with_table_1_batches(tpu):
  chips = OFFERED[tpu]
  hosts, shards = chips // 4, chips // 4       # tensor=4 within a host, fsdp over the hosts
  stages = plan(load(TPU_7B, tpu), num_devices=chips, num_hosts=hosts)
  for name, p in stages.items():
    c = p.config
    if p.kind == "grpo":
      assert c.data.batch_size * hosts == 64 and c.global_batch in (64, 128), name
      assert c.micro_batch % shards == 0, name
    if p.kind == "dpo":
      assert c.data.batch_size * hosts == 32 and c.micro_batch % shards == 0, name
  if tpu == "v5p-128":                           # the sizes the recipe was written with
    assert [stages[n].config.micro_batch for n in ("activation", "search_video", "dpo_1")] == [
        16, 64, 32]
    assert stages["benchmarks"].config.batch_size == 32


@pytest.mark.parametrize("tpu, why", [
    ("v5p-512", "Table 1's DPO global batch of 32 pairs does not split over 64 hosts"),
    ("v5p-1024", "Table 1's DPO global batch of 32 pairs does not split over 128 hosts"),
    ("v5p-64", "the recipe's micro-batches are not sized for it"),
    ("v4-8", "expected a v5p slice name like v5p-128, got 'v4-8'"),
])
def test_other_7b_slices_are_refused_listing_the_offered_ones(tpu, why):
  with pytest.raises(ValueError) as error:
    load(TPU_7B, tpu)
  message = str(error.value)
  assert why in message and message.endswith("supported slices: " + ", ".join(OFFERED)), message


def test_the_old_v5p_256_sizes_would_replicate_the_activation_micro_batch():
  """What the guard caught: v5p-256 kept v5p-128's 16-response micro-batches, 16 rows on 32
  shards."""
  cfg = load(TPU_7B, "v5p-256")
  cfg.stages.activation.micro_batch = 16
  assert re.match(r"config\.stages\.activation\.micro_batch: .* = 16 rows, which the 32 batch "
                  r"shards \(mesh data=1 x fsdp=32 on 128 devices\)",
                  refused(cfg, num_devices=128, num_hosts=32))
