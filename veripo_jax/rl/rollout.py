"""GRPO rollouts: G samples per prompt, their rewards and group advantages, stored as JSON lines.

A round's rollouts are everything its updates need (tokens, sampler log-probs, advantages) and
what the verifier reads later (text, rewards), so they are written atomically before the first
update: a run stopped mid-round reloads them instead of sampling again.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from veripo_jax.fileio import read_jsonl, write_jsonl_atomic
from veripo_jax.data.schema import DATASET_FIELDS, MODEL_FIELDS, REWARD_FIELDS
from veripo_jax.inference import generate
from veripo_jax.parallel.multihost import to_host
from veripo_jax.parallel.sharding import DEFAULT_RULES
from veripo_jax.rl.losses import group_advantages
from veripo_jax.rl.rewards import score_rollouts
from veripo_jax.rl.verifier import rule_inconsistency_rate

# Each rollout record carries its example's REWARD_FIELDS, so that its readers (rewards, the
# verifier, the evaluations) need no dataset. Records written before `options`, `task` and
# `data_type` were kept read as no options and empty strings.


def record_example(record: Mapping[str, Any]) -> dict:
  """The example (`REWARD_FIELDS`) of a stored rollout record or of one batch row."""
  return {"answer": str(record["answer"]), "problem_type": str(record["problem_type"]),
          "options": list(record.get("options") or []), "task": str(record.get("task", "")),
          "data_type": str(record.get("data_type", ""))}


def batch_examples(prompts: Mapping[str, Any]) -> list[dict]:
  """Each prompt row's example from a batch (`data.schema`)."""
  return [record_example({k: prompts[k][i] for k in REWARD_FIELDS if k in prompts})
          for i in range(len(prompts["input_ids"]))]


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  num_samples: int = 8            # G
  max_new_tokens: int = 4096
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  rewards: tuple[str, ...] = ("accuracy", "format")
  reward_weights: tuple[float, ...] | None = None
  advantage_eps: float = 1e-6
  scale_advantages_by_std: bool = True


@dataclasses.dataclass
class Rollouts:
  """Prompt-major responses: row i belongs to prompt row owner[i] = i // G."""
  owner: np.ndarray              # (N,)
  tokens: np.ndarray             # (N, T) int32, pad after the end
  lengths: np.ndarray            # (N,) generated tokens (EOS included); 0 for padding prompts
  logprobs: np.ndarray           # (N, T) float32 sampler log-probs
  texts: list[str]
  rewards: dict[str, np.ndarray]  # per reward name, plus "total"
  advantages: np.ndarray         # (N,)
  truncated: np.ndarray          # (N,) bool: hit max_new_tokens without EOS
  prompt_ids: list[str]
  source_index: np.ndarray       # (N,) the prompt's position in its dataset split
  examples: list[dict]           # each response's example (`REWARD_FIELDS`): what rewards read
  # Where the prompts come from: {"dataset_dir", "split"} (`RunContext.dataset_ref`), which a
  # verifier's pairs carry on.
  dataset: dict = dataclasses.field(default_factory=dict)

  @property
  def group_size(self) -> int:
    return int(np.sum(self.owner == self.owner[0]))

  def records(self) -> list[dict]:
    out = []
    for i in range(len(self.owner)):
      n = int(self.lengths[i])
      out.append({
          "prompt_id": self.prompt_ids[i], "prompt_row": int(self.owner[i]),
          **self.dataset, "source_index": int(self.source_index[i]), **self.examples[i],
          "sample": i % self.group_size, "length": n, "truncated": bool(self.truncated[i]),
          "tokens": self.tokens[i, :n].tolist(), "logprobs": self.logprobs[i, :n].tolist(),
          "text": self.texts[i], "advantage": float(self.advantages[i]),
          "rewards": {k: float(v[i]) for k, v in self.rewards.items()}})
    return out

  @classmethod
  def from_records(cls, records: Sequence[Mapping[str, Any]], width: int) -> "Rollouts":
    n = len(records)
    tokens = np.zeros((n, width), np.int32)
    logprobs = np.zeros((n, width), np.float32)
    for i, r in enumerate(records):
      tokens[i, :r["length"]] = r["tokens"]
      logprobs[i, :r["length"]] = r["logprobs"]
    names = records[0]["rewards"].keys() if records else ()
    return cls(owner=np.array([r["prompt_row"] for r in records], np.int64), tokens=tokens,
               lengths=np.array([r["length"] for r in records], np.int64), logprobs=logprobs,
               texts=[r["text"] for r in records],
               rewards={k: np.array([r["rewards"][k] for r in records], np.float32)
                        for k in names},
               advantages=np.array([r["advantage"] for r in records], np.float32),
               truncated=np.array([r["truncated"] for r in records], bool),
               prompt_ids=[r["prompt_id"] for r in records],
               source_index=np.array([r["source_index"] for r in records], np.int64),
               examples=[record_example(r) for r in records],
               dataset={k: records[0][k] for k in DATASET_FIELDS if records and k in records[0]})

  def summary(self) -> dict[str, float]:
    real = self.lengths > 0
    g = self.group_size
    total = self.rewards["total"].reshape(-1, g)
    live = real.reshape(-1, g).any(1)
    out = {f"reward/{k}": float(v[real].mean()) for k, v in self.rewards.items() if k != "total"}
    out.update({
        "reward/mean": float(self.rewards["total"][real].mean()),
        "response/length_mean": float(self.lengths[real].mean()),
        "response/truncated_rate": float(self.truncated[real].mean()),
        "grpo/zero_variance_groups": float((total.std(1)[live] == 0).mean()),
        "response/inconsistency_rate": rule_inconsistency_rate(
            [t for t, r in zip(self.texts, real) if r]),
    })
    return out


def rollout_file(stage_dir: str, round_index: int) -> str:
  """Where a GRPO stage stores one round's rollouts."""
  return os.path.join(stage_dir, "rollouts", f"round_{round_index:05d}.jsonl")


def rollout_files(stage_dir: str) -> list[str]:
  """A GRPO stage's stored rounds, in round order."""
  return sorted(glob.glob(os.path.join(stage_dir, "rollouts", "round_*.jsonl")))


def write_rollouts(path: str, rollouts: Rollouts) -> None:
  """One JSON line per response (process 0 writes; atomic)."""
  if jax.process_index() == 0:
    write_jsonl_atomic(path, rollouts.records())


def read_rollouts(path: str, width: int) -> Rollouts:
  """One stored round, to resume its updates."""
  return Rollouts.from_records(read_jsonl(path), width)


def read_rollout_records(stage_dir: str, last_rounds: int = 0) -> list[dict]:
  """The stored rollout records of a GRPO stage (the last `last_rounds` rounds; 0: all), each
  tagged with its `round`."""
  files = rollout_files(stage_dir)
  if not files:
    raise FileNotFoundError(f"no stored rollouts under {stage_dir}/rollouts")
  records = []
  for round_index, path in list(enumerate(files))[-last_rounds if last_rounds else 0:]:
    records += [{**record, "round": round_index} for record in read_jsonl(path)]
  return records


def collect_rollouts(model: nnx.Module, prompts: Mapping[str, Any], tokenizer,
                     cfg: RolloutConfig, rng: jax.Array, *, eos_token_ids: Sequence[int],
                     pad_token_id: int, mesh=None, rules=DEFAULT_RULES,
                     dataset: Mapping[str, str] | None = None, prepared=None) -> Rollouts:
  """Samples G responses per prompt row, scores them, and computes group advantages.
  `dataset` ({"dataset_dir", "split"} of the prompts) is recorded with every response;
  `prepared`: the prompts' model inputs, when the caller prepared them (`generate`)."""
  out = generate(model, {k: prompts[k] for k in MODEL_FIELDS if k in prompts},
                 cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                 top_k=cfg.top_k, rng=rng, num_samples=cfg.num_samples,
                 eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, mesh=mesh, rules=rules,
                 prepared=prepared)
  tokens, lengths, logprobs = (to_host(x) for x in (out.tokens, out.lengths, out.logprobs))
  g = cfg.num_samples
  owner = np.repeat(np.arange(len(prompts["input_ids"])), g)
  real = np.asarray(prompts.get("example_mask", np.ones(len(owner) // g)), bool)[owner]
  lengths = np.where(real, lengths, 0).astype(np.int64)
  last = tokens[np.arange(len(tokens)), np.maximum(lengths - 1, 0)]
  truncated = real & (lengths == cfg.max_new_tokens) & ~np.isin(last, eos_token_ids)
  texts = [tokenizer.decode(tokens[i, :lengths[i]].tolist(), skip_special_tokens=True)
           for i in range(len(tokens))]
  rows = batch_examples(prompts)
  examples = [rows[o] for o in owner]
  rewards = score_rollouts(texts, examples, names=cfg.rewards, weights=cfg.reward_weights)
  rewards = {k: np.where(real, np.asarray(v, np.float32), 0.0) for k, v in rewards.items()}
  adv, _ = group_advantages(rewards["total"], g, eps=cfg.advantage_eps,
                            scale_by_std=cfg.scale_advantages_by_std)
  return Rollouts(owner=owner, tokens=tokens.astype(np.int32), lengths=lengths,
                  logprobs=np.where(np.arange(tokens.shape[1]) < lengths[:, None], logprobs,
                                    0.0).astype(np.float32),
                  texts=texts, rewards=rewards, advantages=np.asarray(adv) * real,
                  truncated=truncated, prompt_ids=[str(prompts["id"][o]) for o in owner],
                  source_index=np.asarray(prompts["source_index"], np.int64)[owner],
                  examples=examples, dataset=dict(dataset or {}))
