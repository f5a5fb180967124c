"""The VerIPO stage loop: run the stages a config lists, in order, each from the right policy.

`config.stage_order` names stages; `config.stages.<name>.kind` picks the stage class, and the
rest of the section is that kind's config; `rl.plan` builds and checks them all before the
first stage runs (unknown fields and bad references are errors naming the field). Each
training stage starts from the current policy (or its `init`) and, unless `hands_off=False`,
its exported policy becomes the current one. Re-running with the same workdir skips finished
stages and resumes the running one from its checkpoint; the run ends with `report.md`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from veripo_jax.config_utils import ConfigError, from_config
from veripo_jax.console import format_duration
from veripo_jax.data.sources import prepare_data
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.models import CausalLM, get_family
from veripo_jax.parallel.sharding import make_mesh, merge_rules, shard_model
from veripo_jax.rl.artifacts import read_stage_input, stage_dir
from veripo_jax.rl.plan import PlannedStage, is_path, plan
from veripo_jax.rl.recorded_config import (check_data, check_stages, record_stage,
                                           set_aside)
from veripo_jax.rl.report import write_report
from veripo_jax.rl.stage import RunContext, Stage
from veripo_jax.rl.stage_kinds import STAGE_KINDS
from veripo_jax.train.metrics import MetricsWriter
from veripo_jax.train.preemption import PreemptionGuard


def model_family(cfg):
  """The run's model family (`config.model.family`, default Qwen2.5-VL)."""
  return get_family(cfg.model.get("family", "qwen2_5_vl"))


def policy_config(cfg, path: str, tokenizer, model=None, where: str = "config.model"):
  """The policy's architecture: a checkpoint's config.json, else the preset fitted to the tokenizer,
  its `text` and `vision` fields replaced by those of `model` (default: `config.model`)."""
  family = model_family(cfg)
  if path:
    return family.read_config(path)
  model = cfg.model if model is None else model
  base = family.preset(model.get("preset", cfg.model.preset))
  sections = {name: from_config(type(sub), {**dataclasses.asdict(sub), **model.get(name, {})},
                                f"{where}.{name}")
              for name in ("text", "vision") if (sub := getattr(base, name, None)) is not None}
  return family.fit_to_tokenizer(dataclasses.replace(base, **sections), tokenizer)


def stage_model_config(cfg, name: str, ctx: RunContext):
  """A stage's own architecture (`stages.<name>.model`: preset/text/vision, e.g. a smaller
  judge; `plan` checks it comes with init='fresh'); otherwise the run's."""
  model = cfg.stages[name].get("model")
  if not model:
    return ctx.model_config
  return policy_config(cfg, "", ctx.tokenizer, model, f"config.stages.{name}.model")


def load_policy(cfg, path: str, config, mesh, rules) -> CausalLM:
  """A Hugging Face checkpoint directory, or (no path) a freshly initialised model."""
  dtype, param_dtype = jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)
  family = model_family(cfg)
  # Decoder layers in one lax.scan (flat compile time and activation memory in depth) and the
  # remat policy of its body: `config.model.scan_layers` / `remat_policy`.
  # `config.model.attention`: "auto" (splash on TPU, cuDNN on GPU, XLA on CPU) or a name.
  layers = dict(scan_layers=cfg.model.get("scan_layers", False),
                remat_policy=cfg.model.get("remat_policy", "nothing_saveable"),
                attention_implementation=cfg.model.get("attention", "auto"))
  if path:
    return family.load(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules,
                       rope_mode=cfg.model.rope_mode, **layers)
  model = family.create(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(cfg.seed),
                        rope_mode=cfg.model.rope_mode, **layers)
  return shard_model(model, mesh, rules)


def make_stage(ctx: RunContext, planned: PlannedStage) -> Stage:
  """The stage, given the inputs its kind declares, read from the earlier stages named."""
  inputs = {}
  for field, ref in planned.inputs:
    try:
      inputs[field] = read_stage_input(ctx.workdir, field, ref)
    except ConfigError as e:
      raise ConfigError(f"config.stages.{planned.name}.{e}") from e
  return STAGE_KINDS[planned.kind].stage_cls(ctx, planned.name, planned.config, **inputs)


def stage_init(planned: PlannedStage, current: str, ctx: RunContext) -> str:
  """The checkpoint a stage's model loads ("" = fresh weights)."""
  if not planned.init:
    return current
  if planned.init == "fresh":
    return ""
  if not is_path(planned.init):
    return ctx.policy_dir(planned.init)
  return planned.init


def run(cfg, workdir: str, guard: PreemptionGuard | None = None,
        rerun_changed: bool = False, rerun_from: str | None = None) -> dict[str, dict]:
  """Runs (or resumes) every stage; returns their summaries by name.

  `guard` decides when to stop early (default: on SIGTERM); the stopped stage saves first. A
  stage that ran in this workdir with another config stops the run before anything runs
  (`ConfigChanged`), or with `rerun_changed` starts again with every stage after it;
  `rerun_from` names the stage to start again from (`rl.recorded_config`).
  """
  stages = plan(cfg, num_devices=jax.device_count(), num_hosts=jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  stage_dirs = {name: stage_dir(workdir, name) for name in cfg.stage_order}
  redo = check_stages(cfg, stage_dirs, cfg.stage_order, rerun_changed, rerun_from)
  if jax.process_index() == 0:
    check_data(cfg, workdir)
    for name in redo:
      logging.warning("stage %s: running it again (old outputs: %s)", name,
                      set_aside(stage_dirs[name]))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("veripo_configs_checked")
  tokenizer_dir, dataset_dir = prepare_data(cfg.data, workdir)
  tokenizer = load_tokenizer(tokenizer_dir)
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  policy_path = cfg.model.checkpoint
  summaries: dict[str, dict] = {}
  with MetricsWriter(workdir) as writer, guard or PreemptionGuard() as guard:
    ctx = RunContext(workdir=workdir, mesh=mesh,
                     model_config=policy_config(cfg, policy_path, tokenizer),
                     tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, dataset_dir=dataset_dir,
                     writer=writer, guard=guard, rope_mode=cfg.model.rope_mode, seed=cfg.seed,
                     rules=merge_rules(cfg.get("sharding_rules", ())))
    for i, name in enumerate(cfg.stage_order, 1):
      stage = make_stage(ctx, stages[name])
      label = f"stage {i}/{len(cfg.stage_order)} {name} ({stage.kind})"
      start = time.monotonic()
      if stage.is_done():
        logging.info("%s: done in an earlier run", label)
        summaries[name] = stage.summary()
      else:
        if jax.process_index() == 0:
          record_stage(cfg, name, stage.dir)
        if not stage.uses_policy:
          logging.info("%s: starting", label)
          summaries[name] = stage.run(None)
        else:
          init = stage_init(stages[name], policy_path, ctx)
          logging.info("%s: starting from %s", label, init or "a fresh model")
          config = stage_model_config(cfg, name, ctx)
          summaries[name] = stage.run(load_policy(cfg, init, config, mesh, ctx.rules))
        logging.info("%s: finished in %s", label, format_duration(time.monotonic() - start))
      if stages[name].hands_off:
        policy_path = stage.policy_dir
    if jax.process_index() == 0:
      logging.info("report: %s", write_report(workdir, cfg.stage_order))
  return summaries
