"""A run's stages built and checked before the first one runs.

`plan(cfg)` types every stage's section as its kind's config dataclass and checks the
run-level sections and every reference between stages. Any problem is a `ConfigError` whose
message names the field (and the closest valid name), so a typo in the ninth stage stops the
run before the first one starts, not after it.

Given the device count (`num_devices`, and `num_hosts` for the per-host batch sizes), `plan`
also checks that every array batch a stage places on the mesh splits over its batch shards
(mesh data x fsdp): prompt and rollout batches, every micro-batch of a step (the last, smaller
one included). Placement (`train.learner.batch_sharding_tree`) and the activation constraints
(`parallel.sharding.logical_to_spec`) would otherwise replicate such a batch on every shard.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jax

from veripo_jax.config_utils import ConfigError, closest, from_config, reject_unknown
from veripo_jax.data.sources import check_source
from veripo_jax.models import FAMILIES
from veripo_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from veripo_jax.parallel.remat import check_remat_policy
from veripo_jax.parallel.sharding import merge_rules, mesh_shape
from veripo_jax.rl.artifacts import STAGE_INPUTS, is_path
from veripo_jax.rl.stage_kinds import STAGE_KINDS, training_kinds

# Fields of `config.stages.<name>` the loop reads itself (the rest go to the kind's config):
#   kind       the stage class (STAGE_KINDS);
#   init       where the stage's model starts: "" = the current policy, "fresh" = new weights,
#              a stage name = that stage's exported policy, else a checkpoint directory;
#   hands_off  whether the stage's exported policy becomes the current policy (default: the
#              kind's; a judge trained by an sft stage sets False);
#   model      (init="fresh") the stage model's own preset/text/vision, e.g. a smaller judge;
# and the stage inputs its kind declares (`StageKind.inputs`), e.g. a dpo stage's
#   pairs      a verifier stage's name, or a pairs.jsonl path.
RUNNER_FIELDS = ("kind", "init", "hands_off", "model")
INPUT_FIELDS = tuple(STAGE_INPUTS)
_MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class PlannedStage:
  name: str
  kind: str
  config: Any                  # the kind's config dataclass
  init: str = ""
  hands_off: bool = True       # its exported policy becomes the current one
  inputs: tuple[tuple[str, str], ...] = ()   # (field, stage name or path) it reads

  def input(self, field: str) -> str:
    return dict(self.inputs).get(field, "")


def _check_run_sections(cfg) -> None:
  if not isinstance(cfg.get("seed", 0), int):
    raise ConfigError(f"config.seed: an integer, not {cfg.seed!r}")
  check_source(cfg.data)
  for axis in _MESH_AXES:
    value = cfg.mesh.get(axis)
    if not isinstance(value, int) or value == 0 or value < -1:
      raise ConfigError(f"config.mesh.{axis}: a positive integer or -1, not {value!r}")
  reject_unknown(cfg.mesh, _MESH_AXES, "config.mesh")
  try:
    merge_rules(cfg.get("sharding_rules", ()))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.sharding_rules: {e}") from e
  family = cfg.model.get("family", "qwen2_5_vl")
  if family not in FAMILIES:
    raise ConfigError(f"config.model.family: unknown {family!r}{closest(family, FAMILIES)}; "
                      f"known: {sorted(FAMILIES)}")
  if not isinstance(cfg.model.get("scan_layers", False), bool):
    raise ConfigError(f"config.model.scan_layers: true or false, not "
                      f"{cfg.model.scan_layers!r}")
  try:
    check_remat_policy(cfg.model.get("remat_policy", "nothing_saveable"))
  except ValueError as e:
    raise ConfigError(f"config.model.{e}") from e
  if cfg.model.get("attention", "auto") not in ATTENTION_IMPLEMENTATIONS:
    raise ConfigError(f"config.model.attention: unknown {cfg.model.attention!r}; "
                      f"known: {list(ATTENTION_IMPLEMENTATIONS)}")
  presets = FAMILIES[family].presets
  preset = cfg.model.get("preset", "")
  if not cfg.model.get("checkpoint") and preset not in presets:
    raise ConfigError(f"config.model.preset: unknown {preset!r}{closest(preset, presets)}; "
                      f"known: {sorted(presets)}")


def _build(cfg, name: str) -> PlannedStage:
  section = cfg.stages[name]
  kind = section.get("kind")
  if kind not in STAGE_KINDS:
    raise ConfigError(f"config.stages.{name}.kind: unknown {kind!r}{closest(kind, STAGE_KINDS)}; "
                      f"known: {sorted(STAGE_KINDS)}")
  config_cls, stage_cls = STAGE_KINDS[kind].config_cls, STAGE_KINDS[kind].stage_cls
  fields = {k: v for k, v in section.items() if k not in RUNNER_FIELDS + INPUT_FIELDS}
  hands_off = section.get("hands_off")
  if hands_off is not None and not isinstance(hands_off, bool):
    raise ConfigError(f"config.stages.{name}.hands_off: true or false, not {hands_off!r}")
  for field in INPUT_FIELDS:
    if field in section and field not in STAGE_KINDS[kind].inputs:
      raise ConfigError(f"config.stages.{name}.{field}: a {kind} stage reads no {field}")
  return PlannedStage(name, kind, from_config(config_cls, fields, f"config.stages.{name}"),
                      init=section.get("init", ""),
                      hands_off=stage_cls.hands_off if hands_off is None else hands_off,
                      inputs=tuple((f, section.get(f, "")) for f in STAGE_KINDS[kind].inputs))


def _check_references(cfg, stages: dict[str, PlannedStage]) -> None:
  order = list(cfg.stage_order)

  def earlier(name: str, field: str, ref: str, kinds: tuple[str, ...]) -> PlannedStage:
    before = order[:order.index(name)]
    if ref not in before:
      raise ConfigError(f"config.stages.{name}.{field}: {ref!r} is not an earlier stage"
                        f"{closest(ref, before)}")
    if stages[ref].kind not in kinds:
      raise ConfigError(f"config.stages.{name}.{field}: {ref!r} is a {stages[ref].kind} stage; "
                        f"expected {' or '.join(kinds)}")
    return stages[ref]

  for name, stage in stages.items():
    c = stage.config
    if stage.init not in ("", "fresh") and not is_path(stage.init):
      earlier(name, "init", stage.init, training_kinds())
    model = cfg.stages[name].get("model")
    if model:
      if stage.init != "fresh":
        raise ConfigError(f"config.stages.{name}.model: an architecture of its own needs "
                          f"init='fresh' (the stage starts from {stage.init or 'the policy'})")
      reject_unknown(model, ("preset", "text", "vision"), f"config.stages.{name}.model")
    if stage.kind == "dpo" and not is_path(stage.input("pairs")):
      verifier = earlier(name, "pairs", stage.input("pairs"), ("verifier",))
      # Pairs name their prompts' dataset and split; DPO must encode them as the sampler saw
      # them.
      _same_data(name, c.data, stages[verifier.config.rollouts_from], ("template", "vision"),
                 "encodes the pairs' prompts as")
    if stage.kind == "verifier":
      earlier(name, "rollouts_from", c.rollouts_from, ("grpo",))
    if stage.kind in ("verifier", "judge_eval") and c.judge.from_stage:
      earlier(name, "judge.from_stage", c.judge.from_stage, training_kinds())
    if stage.kind == "grpo":
      for ref in c.discard_from:
        verifier = earlier(name, "discard_from", ref, ("verifier",))
        _same_data(name, c.data, stages[verifier.config.rollouts_from],
                   ("split", "dataset_dir"), "reads the prompts it discards by index from")
    if stage.kind == "judge_eval":
      for ref in c.evals:
        earlier(name, "evals", ref, ("eval",))


def _same_data(name: str, data, source: PlannedStage, fields: tuple[str, ...],
               why: str) -> None:
  """Stage `name`'s data agrees with `source`'s in `fields` (it `why` that stage)."""
  for field in fields:
    mine, theirs = getattr(data, field), getattr(source.config.data, field)
    if mine != theirs:
      raise ConfigError(f"config.stages.{name}.data.{field}: {mine!r}, but the stage {why} "
                        f"stage {source.name}, which has {theirs!r}")


# What a stage places on the mesh with a leading batch (row) axis: (field, rows, what), rows
# counted over all hosts. Stage kinds not listed place no batch on the policy's mesh (the
# verifier and judge_eval serve their judge on an engine of their own).

def _grpo_batches(c, hosts: int) -> Iterator[tuple[str, int, str]]:
  g = c.rollout.num_samples
  prompts = c.data.batch_size * hosts
  # The prompts are prefilled, then decoded G samples each: the responses divide when they do.
  yield ("data.batch_size", prompts,
         f"a rollout round's prompts ({c.data.batch_size} a host x {hosts} hosts)")
  # Steps take global_batch / G groups, micro-batches micro_batch / G of a step's groups; with
  # share_prompt a group is one sequence row, else G rows. A shorter micro-batch (a step's
  # last, or one of a round `filter_zero_variance` shortened) is padded to the full size.
  per_row = 1 if c.share_prompt else g
  shared = f" / G={g}: a group shares a row" if c.share_prompt else ""
  per_micro = c.micro_batch // g
  yield ("micro_batch", min(per_micro, prompts) * per_row,
         f"a micro-batch's sequence rows ({c.micro_batch} responses{shared})")


def _dpo_batches(c, hosts: int) -> Iterator[tuple[str, int, str]]:
  # A step reads batch_size prompt rows a host, each with pairs_per_row pair slots; a
  # micro-batch takes micro_batch / pairs_per_row of them: one sequence row each with
  # share_prompt (2 x pairs_per_row responses), else 2 x pairs_per_row rows.
  rows = c.data.batch_size * hosts
  per_micro = max(1, c.micro_batch // c.pairs_per_row)
  per_row = 1 if c.share_prompt else 2 * c.pairs_per_row
  layout = ("share_prompt: a prompt row holds its pairs' responses" if c.share_prompt else
            f"{per_row} rows a prompt row")
  if rows >= per_micro:
    yield ("micro_batch", per_micro * per_row,
           f"a micro-batch's sequence rows ({c.micro_batch} pair slots, {layout})")
  if rows % per_micro:
    yield ("data.batch_size", rows % per_micro * per_row,
           f"the last micro-batch's sequence rows ({c.data.batch_size} prompt rows a host x "
           f"{hosts} hosts in micro-batches of {per_micro}; {layout})")


def _sft_batches(c, hosts: int) -> Iterator[tuple[str, int, str]]:
  rows = c.data.batch_size * hosts
  if rows >= c.micro_batch:
    yield "micro_batch", c.micro_batch, "a micro-batch's examples"
  if rows % c.micro_batch:
    yield ("data.batch_size", rows % c.micro_batch,
           f"the last micro-batch's examples ({c.data.batch_size} a host x {hosts} hosts in "
           f"micro-batches of {c.micro_batch})")


def _eval_batches(c, hosts: int) -> Iterator[tuple[str, int, str]]:
  prompts = c.data.batch_size * hosts
  yield ("data.batch_size", prompts,
         f"a batch's prompts ({c.data.batch_size} a host x {hosts} hosts)")


def _benchmark_batches(c, hosts: int) -> Iterator[tuple[str, int, str]]:
  del hosts                                     # a global batch size
  yield "batch_size", c.batch_size, "prompts per generate call (all hosts)"


_BATCHES = {"grpo": _grpo_batches, "dpo": _dpo_batches, "sft": _sft_batches,
            "eval": _eval_batches, "benchmark": _benchmark_batches}


def _check_batches(cfg, stages: dict[str, PlannedStage], num_devices: int,
                   num_hosts: int) -> None:
  """Every batch a stage places on the mesh splits over the batch shards (data x fsdp)."""
  try:
    sizes = mesh_shape(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, num_devices)
  except ValueError as e:
    raise ConfigError(f"config.mesh: {e}") from e
  shards = sizes["data"] * sizes["fsdp"]
  if shards == 1:
    return
  mesh = f"mesh data={sizes['data']} x fsdp={sizes['fsdp']} on {num_devices} devices"
  for name, stage in stages.items():
    batches = _BATCHES.get(stage.kind)
    for field, rows, what in batches(stage.config, num_hosts) if batches else ():
      if rows % shards:
        raise ConfigError(
            f"config.stages.{name}.{field}: {what} = {rows} rows, which the {shards} batch "
            f"shards ({mesh}) do not divide; the batch would be replicated on every shard "
            f"(make it a multiple of {shards}, or change config.mesh)")


def plan(cfg, *, num_devices: int | None = None,
         num_hosts: int | None = None) -> dict[str, PlannedStage]:
  """Every stage of `cfg.stage_order`, typed and checked, by name (in order).

  With `num_devices` (the run's `jax.device_count()`, or a TPU slice's chips when planning
  for one), also the batches against the mesh's batch shards; `num_hosts` (default
  `jax.process_count()`) turns per-host batch sizes into global ones.
  """
  _check_run_sections(cfg)
  order = list(cfg.stage_order)
  if not order:
    raise ConfigError("config.stage_order: name at least one stage")
  for name in order:
    if order.count(name) > 1:
      raise ConfigError(f"config.stage_order: {name!r} appears {order.count(name)} times")
    if name not in cfg.stages:
      raise ConfigError(f"config.stage_order: {name!r} is not in config.stages"
                        f"{closest(name, cfg.stages)}")
  stages = {name: _build(cfg, name) for name in order}
  _check_references(cfg, stages)
  if num_devices is not None:
    _check_batches(cfg, stages, num_devices,
                   jax.process_count() if num_hosts is None else num_hosts)
  return stages
