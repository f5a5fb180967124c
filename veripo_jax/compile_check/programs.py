"""Every jitted program a run's stages execute, with abstract arguments, stage by stage.

Each stage kind is driven through its own code: an abstract `Learner` (the stage's config,
the run's shardings), the stage's sequence builders and micro-batching over representative
host batches (`inputs`), `inference.generation` for rollouts and evaluations, and a
`QwenEngine` over the abstract judge. A learner step's result shapes (`jax.eval_shape`) feed
the next program, as its outputs do in a run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from veripo_jax.data.schema import MODEL_FIELDS
from veripo_jax.inference.generate import generation
from veripo_jax.rl.objectives import DPOBatch, SequenceLogprobs
from veripo_jax.rl.sequences import encode_vision
from veripo_jax.train.learner import Learner
from veripo_jax.compile_check.inputs import (Shapes, choose_prompt_length, per_chip_bytes,
                                             prompt_batch, response_tokens, video_grid)


@dataclasses.dataclass
class Program:
  """One jitted program of a stage: `fn.lower(*args, **kwargs)` compiles it."""
  stage: str
  program: str
  fn: Callable
  args: tuple
  kwargs: dict = dataclasses.field(default_factory=dict)
  # Bytes per chip of the stage's other live buffers (train state, frozen tower, reference
  # policy, features) that are not among the program's arguments.
  resident_bytes: int = 0
  mesh: Any = None                 # the program's mesh when not the run's (the judge's chip)


@dataclasses.dataclass
class Env:
  """What every stage builder needs: the run's pieces, made abstract."""
  cfg: Any                         # the run's ml-collections config
  ctx: Any                         # an `rl.stage.RunContext` (mesh, model config, rules)
  hosts: int                       # processes of a run on the topology
  policy: Callable[[Any], Any]     # model config -> abstract model (the run's dtypes)
  judge: Callable[[Any], tuple]    # JudgeConfig -> (abstract judge model, mesh) or None
  prompt_length: int | None = None
  max_frames: int | None = None


def _resident(live: list, args, kwargs, extra: int = 0) -> int:
  """Bytes per chip of `live` trees' leaves that are not arguments (by identity)."""
  given = {id(x) for x in jax.tree.leaves((args, kwargs))}
  return extra + sum(per_chip_bytes([x]) for tree in live for x in jax.tree.leaves(tree)
                     if id(x) not in given)


def _program(stage, name, call, live=(), extra=0) -> Program:
  fn, args, *rest = call
  kwargs = rest[0] if rest else {}
  return Program(stage, name, fn, tuple(args), kwargs, _resident(list(live), args, kwargs, extra))


def _shapes(env: Env, data, response_length: int) -> Shapes:
  length = choose_prompt_length(data, env.prompt_length)
  grid = video_grid(env.ctx.model_config.vision, data.vision, length, env.max_frames)
  return Shapes(length, response_length, grid)


def _learner(env: Env, cfg) -> Learner:
  model = env.policy(env.ctx.model_config)
  return Learner(model, dataclasses.replace(cfg.optimizer, total_steps=1), env.ctx.mesh,
                 rules=env.ctx.rules, frozen=cfg.frozen)


def _features(stage, learner, builder, live) -> list[Program]:
  """The frozen tower's features of a prompt batch (`SequenceBuilder` computed them)."""
  if builder.features is None:
    return []
  call = learner.evaluate_call(encode_vision, {"vision": builder.inputs.vision})
  return [_program(stage, "features", call, live)]


def _updates(stage, learner, objective, batches, per_step, live, extra=0) -> list[Program]:
  """accumulate (the first micro-batch of a step, then the next ones) and apply."""
  out = []
  batch = learner.put_batch(batches[0])
  call = learner.accumulate_call(objective, batch)
  out.append(_program(stage, "accumulate", call, live, extra))
  acc = call[0].eval_shape(*call[1])
  if per_step > 1:
    call = learner.accumulate_call(objective, batch, acc)
    out.append(_program(stage, "accumulate_next", call, live, extra))
  call = learner.apply_call(acc)
  out.append(_program(stage, "apply", call, live, extra))
  return out


def _logprobs(objective) -> SequenceLogprobs:
  """The gradient-free log-prob pass a stage runs with its objective."""
  make = getattr(objective, "sequence_logprobs", None)
  return make() if make is not None else SequenceLogprobs()


def _generate(stage, env: Env, model, prompts, rollout, *, prepared=None, live=(),
              repetition_penalty: float = 1.0) -> list[Program]:
  ctx = env.ctx
  run = generation(model, {k: prompts[k] for k in MODEL_FIELDS if k in prompts},
                   rollout.max_new_tokens, temperature=rollout.temperature,
                   top_p=rollout.top_p, top_k=rollout.top_k,
                   repetition_penalty=repetition_penalty, rng=jax.random.key(0),
                   num_samples=rollout.num_samples, eos_token_ids=ctx.eos_token_ids,
                   pad_token_id=ctx.model_config.pad_token_id, mesh=ctx.mesh, rules=ctx.rules,
                   prepared=prepared)
  prefill = run.prefill()
  logits, cache, seen = prefill[0].eval_shape(*prefill[1], **prefill[2])
  return [_program(stage, "generate_prefill", prefill, live),
          _program(stage, "generate_decode", run.decode(logits, cache, seen), live)]


# --- stage kinds -------------------------------------------------------------------------------


def sft_programs(env: Env, name: str, cfg) -> list[Program]:
  from veripo_jax.rl.sequences import split_supervised
  from veripo_jax.rl.sft import sft_micro_batches
  from veripo_jax.rl.stage import sequence_builder
  ctx = env.ctx
  learner = _learner(env, cfg)
  batch = prompt_batch(ctx.model_config, cfg.data, cfg.data.batch_size * env.hosts,
                       _shapes(env, cfg.data, cfg.data.response_buckets[-1]),
                       rope_mode=ctx.rope_mode, with_response=True)
  micro = sft_micro_batches(ctx, learner, batch, cfg.micro_batch, cfg.data)
  live = [learner.state, learner.frozen]
  # The stage's builder computed the frozen tower's features; this one shows the program.
  builder = sequence_builder(ctx, learner, split_supervised(batch)[0], cfg.data)
  feats = [builder.features] if builder.features is not None else []
  return (_features(name, learner, builder, live) +
          _updates(name, learner, cfg.objective, micro, len(micro), live + feats))


def grpo_programs(env: Env, name: str, cfg) -> list[Program]:
  from veripo_jax.rl.grpo import group_builder, micro_batches
  from veripo_jax.rl.rollout import Rollouts
  ctx, config = env.ctx, env.ctx.model_config
  learner = _learner(env, cfg)
  ref = learner.snapshot() if cfg.objective.kl_coef else None
  rows, g = cfg.data.batch_size * env.hosts, cfg.rollout.num_samples
  response = min(cfg.rollout.max_new_tokens, cfg.data.response_buckets[-1])
  prompts = prompt_batch(config, cfg.data, rows, _shapes(env, cfg.data, response),
                         rope_mode=ctx.rope_mode)
  builder = group_builder(ctx, learner, cfg, prompts)
  live = [learner.state, learner.frozen]
  ref_bytes = per_chip_bytes(ref) if ref is not None else 0
  out = _features(name, learner, builder, live)
  feats = [builder.features] if builder.features is not None else []
  out += _generate(name, env, learner.model(), prompts, cfg.rollout,
                   prepared=builder.generation_inputs(), live=live + feats)
  tokens, lengths = response_tokens(config, rows * g, cfg.rollout.max_new_tokens)
  rollouts = Rollouts(owner=np.repeat(np.arange(rows), g), tokens=tokens, lengths=lengths,
                      logprobs=np.zeros(tokens.shape, np.float32), texts=[], rewards={},
                      advantages=np.ones(rows * g, np.float32), truncated=np.zeros(rows * g, bool),
                      prompt_ids=[], source_index=np.arange(rows * g), examples=[])
  per_micro = cfg.micro_batch // g
  batch = micro_batches(builder, rollouts, np.arange(min(rows, per_micro)), per_micro)[0]
  logprobs = _logprobs(cfg.objective)
  if cfg.recompute_old_logprobs:
    out.append(_program(name, "old_logprobs", learner.evaluate_call(logprobs, batch.sequences),
                        live + feats, ref_bytes))
  if ref is not None:
    out.append(_program(name, "ref_logprobs", learner.evaluate_call(
        logprobs, batch.sequences, params=ref), live + feats, ref_bytes))
    batch = dataclasses.replace(batch, ref_logp=np.zeros_like(batch.old_logp))
  return out + _updates(name, learner, cfg.objective, [batch], cfg.global_batch // cfg.micro_batch,
                        live + feats, ref_bytes)


def dpo_programs(env: Env, name: str, cfg) -> list[Program]:
  from veripo_jax.rl.dpo import dpo_micro_batches
  from veripo_jax.rl.stage import sequence_builder
  ctx, config = env.ctx, env.ctx.model_config
  learner = _learner(env, cfg)
  ref = learner.snapshot()
  rows, slots = cfg.data.batch_size * env.hosts, cfg.pairs_per_row
  response = cfg.data.response_buckets[-1]
  batch = prompt_batch(config, cfg.data, rows, _shapes(env, cfg.data, response),
                       rope_mode=ctx.rope_mode)
  batch["responses"], batch["response_lengths"] = response_tokens(config, 2 * slots * rows,
                                                                  response)
  batch["pair_index"] = np.arange(slots * rows, dtype=np.int64)
  batch["nll_from"] = np.zeros(slots * rows, np.int32)
  width = (-(-2 * slots * response // 16) * 16
           if cfg.pack_responses and cfg.share_prompt else None)
  builder = sequence_builder(ctx, learner, batch, cfg.data,
                             branches=2 * slots if cfg.share_prompt else 1, packed_width=width)
  micro = dpo_micro_batches(builder, batch, cfg.micro_batch)
  live = [learner.state, learner.frozen]
  ref_bytes = per_chip_bytes(ref)
  out = _features(name, learner, builder, live)
  feats = [builder.features] if builder.features is not None else []
  m = micro[0]
  out.append(_program(name, "ref_logprobs", learner.evaluate_call(
      _logprobs(cfg.objective), m["sequences"], params=ref), live + feats, ref_bytes))
  pairs = len(m["pair_index"])
  nll_weight = np.ones(pairs, np.float32) if cfg.nll_families else None
  dpo = DPOBatch(sequences=m["sequences"], ref_logp=np.zeros(2 * pairs, np.float32),
                 valid=m["valid"], nll_from=m["nll_from"], nll_weight=nll_weight)
  return out + _updates(name, learner, cfg.objective, [dpo], len(micro), live + feats, ref_bytes)


def eval_programs(env: Env, name: str, cfg) -> list[Program]:
  model = env.policy(env.ctx.model_config, placed=True)
  rows = cfg.data.batch_size * env.hosts
  prompts = prompt_batch(env.ctx.model_config, cfg.data, rows, _shapes(env, cfg.data, 1),
                         rope_mode=env.ctx.rope_mode)
  return _generate(name, env, model, prompts, cfg.rollout)


def benchmark_programs(env: Env, name: str, cfg) -> list[Program]:
  from veripo_jax.rl.rollout import RolloutConfig
  from veripo_jax.rl.stage import DataConfig
  from veripo_jax.data.vision import VisionSettings
  config = env.ctx.model_config
  vision = VisionSettings.for_model(config.vision) if config.vision is not None else None
  if vision is not None:
    vision = dataclasses.replace(vision, max_frames=cfg.max_frames, max_pixels=cfg.max_pixels)
  data = DataConfig(batch_size=cfg.batch_size, template=cfg.template,
                    prompt_buckets=tuple(cfg.prompt_buckets),
                    vision=vision or VisionSettings())
  prompts = prompt_batch(config, data, cfg.batch_size, _shapes(env, data, 1),
                         rope_mode=env.ctx.rope_mode)
  rollout = RolloutConfig(num_samples=1, max_new_tokens=cfg.max_new_tokens, temperature=0.0)
  out = _generate(name, env, env.policy(config, placed=True), prompts, rollout,
                  repetition_penalty=cfg.repetition_penalty)
  return out + judge_programs(env, name, cfg.judge)


def judge_programs(env: Env, name: str, judge) -> list[Program]:
  """The judge server's engine: init, prefill (the longest bucket), insert, generate."""
  from veripo_jax.serving.engine import QwenEngine
  served = env.judge(judge)
  if served is None:
    return []
  model, mesh = served
  engine = QwenEngine(model, mesh=mesh, max_concurrent_decodes=judge.max_concurrent_decodes,
                      max_prefill_length=judge.max_prefill_length,
                      max_decode_length=judge.max_decode_length)
  params = engine.load_params()
  init = engine.init_call()
  state = init[0].eval_shape(*init[1])
  n = engine.max_prefill_length
  prefill = engine.prefill_call(params, np.full((n,), 3, np.int32), n)
  prefix = prefill[0].eval_shape(*prefill[1])
  live = [params]
  out = [_program(name, "judge_init", init, live),
         _program(name, "judge_prefill", prefill, live + [state]),
         _program(name, "judge_insert", engine.insert_call(prefix, state, 0), live),
         _program(name, "judge_generate", engine.generate_call(params, state), live)]
  for p in out:
    p.mesh = mesh
  return out


def verifier_programs(env: Env, name: str, cfg) -> list[Program]:
  return judge_programs(env, name, cfg.judge)


def judge_eval_programs(env: Env, name: str, cfg) -> list[Program]:
  return judge_programs(env, name, cfg.judge)


BUILDERS: dict[str, Callable[..., list[Program]]] = {
    "sft": sft_programs, "grpo": grpo_programs, "dpo": dpo_programs, "eval": eval_programs,
    "benchmark": benchmark_programs, "verifier": verifier_programs,
    "judge_eval": judge_eval_programs,
}


def abstract_args(tree, mesh):
  """Arguments for `lower`: arrays as their shapes; shapes on an abstract mesh (an unsharded
  jit's `eval_shape`) get `mesh`, the program's."""
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      s = x.sharding
      if s is not None and isinstance(getattr(s, "mesh", None), jax.sharding.AbstractMesh):
        s = jax.sharding.NamedSharding(mesh, s.spec)
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
      return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
    return x
  return jax.tree.map(one, tree)
