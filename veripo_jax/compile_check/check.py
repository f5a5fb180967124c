"""Compile a run's programs for a TPU topology and measure them against the chips' HBM."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from veripo_jax.compile_check.inputs import (abstract_model, checkpoint_config_path,
                                             per_chip_bytes, place_model, run_model_config)
from veripo_jax.compile_check.programs import BUILDERS, Env, Program, abstract_args
from veripo_jax.compile_check.topology import Topology
from veripo_jax.parallel.sharding import make_mesh, merge_rules

BYTE_FIELDS = ("argument", "output", "alias", "temp", "code", "resident", "total")


@dataclasses.dataclass
class Row:
  stage: str
  program: str
  per_chip_bytes: dict[str, int]
  hbm_bytes: int
  fits: bool
  compile_s: float
  flops: float | None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def run_environment(cfg, topology: Topology, *, prompt_length: int | None = None,
                    max_frames: int | None = None, judge_preset: str | None = None) -> Env:
  """The run's mesh on the topology's devices, its model config (from the checkpoint's
  config.json when there is one, else the preset), and abstract model builders."""
  from veripo_jax.rl.stage import RunContext
  devices = topology.devices()
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
  rules = merge_rules(cfg.get("sharding_rules", ()))
  family, tokenizer, model_config = run_model_config(cfg)
  ctx = RunContext(workdir="", mesh=mesh, model_config=model_config, tokenizer=tokenizer,
                   tokenizer_dir="", dataset_dir="", writer=None, guard=None,
                   rope_mode=cfg.model.rope_mode, rules=rules, seed=cfg.seed)
  layers = dict(scan_layers=cfg.model.get("scan_layers", False),
                remat_policy=cfg.model.get("remat_policy", "nothing_saveable"))

  def policy(config, placed: bool = False):
    model = abstract_model(family, config, dtype=jnp.dtype(cfg.model.dtype),
                           param_dtype=jnp.dtype(cfg.model.param_dtype), seed=cfg.seed,
                           rope_mode=cfg.model.rope_mode, **layers)
    return place_model(model, mesh, rules) if placed else model

  def judge(j):
    """The served judge: one chip (the server's default device), the checkpoint's dtype for
    compute and parameters; its architecture from config.json, the stage it comes from, or
    (a placeholder path) the text-only `judge_preset` (default: the run's model preset)."""
    from veripo_jax.models import get_family
    from veripo_jax.rl.loop import stage_model_config
    if j.from_stage:
      config = stage_model_config(cfg, j.from_stage, ctx)
    elif j.checkpoint:
      path = checkpoint_config_path(j.checkpoint)
      config = (get_family("qwen2_5_vl").read_config(path) if path else
                get_family("qwen2").preset(judge_preset or cfg.model.preset))
    else:
      return None          # a server elsewhere (`address`), or no judge: nothing to compile
    one = make_mesh(1, 1, 1, devices=devices[:1])
    dtype = jnp.dtype(j.dtype)
    model = abstract_model(family, config, dtype=dtype, param_dtype=dtype, seed=cfg.seed,
                           rope_mode=cfg.model.rope_mode)
    return place_model(model, one, rules), one

  return Env(cfg=cfg, ctx=ctx, hosts=topology.hosts, policy=policy, judge=judge,
             prompt_length=prompt_length, max_frames=max_frames)


def stage_programs(env: Env, stages: dict, only: Sequence[str] = ()) -> list[Program]:
  """Every program of the planned stages (`rl.plan.plan`), in run order."""
  from veripo_jax.rl.loop import stage_model_config
  out = []
  for name, planned in stages.items():
    if only and name not in only:
      continue
    if planned.kind not in BUILDERS:
      raise ValueError(f"stage {name}: kind {planned.kind!r} has no compile check")
    config = stage_model_config(env.cfg, name, env.ctx)
    stage_env = dataclasses.replace(env, ctx=dataclasses.replace(env.ctx, model_config=config))
    out += BUILDERS[planned.kind](stage_env, name, planned.config)
  return out


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  return {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
          "alias": int(m.alias_size_in_bytes), "temp": int(m.temp_size_in_bytes),
          "code": int(m.generated_code_size_in_bytes)}


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _exhausted(error: Exception, lowered, args) -> dict[str, int]:
  """Per-chip bytes of a program XLA refused to compile because it needs more HBM than the
  chip has: its temporaries from XLA's message, arguments and outputs from their shardings."""
  m = re.search(r"HLO temporaries \(([\d.]+)([KMGT]?)\)", str(error))
  temp = int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0
  try:
    output = per_chip_bytes(lowered.out_info)
  except Exception:                     # noqa: BLE001 - an estimate; 0 when unknown
    output = 0
  return {"argument": per_chip_bytes(args), "output": output, "alias": 0, "temp": temp,
          "code": 0}


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def compile_programs(programs: Sequence[Program], mesh, hbm_bytes: int, log=print) -> list[Row]:
  """Lowers each program, compiles each distinct one once, and measures it per chip: XLA's
  argument + output - aliased + temp + code bytes, plus the stage's other live buffers."""
  seen: dict[str, tuple[dict, float, float | None]] = {}
  rows = []
  for p in programs:
    target = p.mesh or mesh
    lowered = p.fn.lower(*abstract_args(p.args, target), **abstract_args(p.kwargs, target))
    key = hashlib.sha256(lowered.as_text().encode()).hexdigest()
    if key not in seen:
      start = time.perf_counter()
      try:
        compiled = lowered.compile()
        measured = (_memory(compiled), _flops(compiled))
      except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
          raise
        measured = (_exhausted(e, lowered, abstract_args(p.args, target)), None)
      seen[key] = (measured[0], time.perf_counter() - start, measured[1])
    memory, seconds, flops = seen[key]
    memory = dict(memory, resident=p.resident_bytes)
    memory["total"] = (memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
                       + memory["code"] + memory["resident"])
    row = Row(p.stage, p.program, memory, hbm_bytes, memory["total"] <= hbm_bytes,
              round(seconds, 2), flops)
    rows.append(row)
    log(format_row(row))
  return rows


def check(cfg, topology: Topology, *, hbm_bytes: int | None = None, stages: Sequence[str] = (),
          prompt_length: int | None = None, max_frames: int | None = None,
          judge_preset: str | None = None, log=print) -> list[Row]:
  """Rows for every program the config's stages run, compiled for `topology`."""
  from veripo_jax.rl.plan import plan
  planned = plan(cfg)
  unknown = [s for s in stages if s not in planned]
  if unknown:
    raise ValueError(f"--stages: unknown {unknown}; the config's stages: {list(planned)}")
  env = run_environment(cfg, topology, prompt_length=prompt_length, max_frames=max_frames,
                        judge_preset=judge_preset)
  programs = stage_programs(env, planned, stages)
  log(HEADER)
  return compile_programs(programs, env.ctx.mesh, hbm_bytes or topology.hbm_bytes, log=log)


_GIB = 1024 ** 3
HEADER = (f"{'stage':<14} {'program':<17} {'args':>7} {'out':>7} {'temp':>7} {'code':>6} "
          f"{'resid':>7} {'total':>7} {'HBM':>6}  fits  compile_s  TFLOPs")


def format_row(r: Row) -> str:
  b = {k: v / _GIB for k, v in r.per_chip_bytes.items()}
  flops = f"{r.flops / 1e12:8.3f}" if r.flops is not None else "       -"
  return (f"{r.stage:<14} {r.program:<17} {b['argument']:7.2f} {b['output']:7.2f} "
          f"{b['temp']:7.2f} {b['code']:6.2f} {b['resident']:7.2f} {b['total']:7.2f} "
          f"{r.hbm_bytes / _GIB:6.1f}  {'yes' if r.fits else 'NO ':<4} {r.compile_s:9.1f} {flops}")


def write_json(rows: Sequence[Row], path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump([r.to_json() for r in rows], f, indent=1)


__all__ = ["BYTE_FIELDS", "Row", "check", "compile_programs", "format_row", "run_environment",
           "stage_programs", "write_json"]
