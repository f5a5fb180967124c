"""Training sequences = a prompt copy + one response, with the prompt's video encoded once.

GRPO trains on G responses per prompt and DPO on a chosen and a rejected response per prompt.
Each sequence row gets a copy of its prompt's tokens and positions, but every placeholder of
the copy points (through `feature_index`) at the same vision-feature rows, so the vision tower
runs once per prompt in the update as in the rollout. Responses are right-padded after the
left-padded prompt; response positions continue from the prompt's `next_position` on all three
M-RoPE axes, exactly as during generation.

With `branches` b > 1 (prompt sharing), the b responses to one prompt share one row: the prompt
once, then b response blocks that each see the prompt and themselves only (the inputs' `branch`)
and all take the positions a lone response would. A DPO pair (b = 2) then costs the prompt once
instead of twice; targets and log-probs keep the one-response-per-row layout, branch-major.
With a `packed_width`, a row's branches sit end to end after the prompt, each as long as its
response, padded once at the end of the row instead of each to the longest response (`columns`
then says where each response's predicting states are).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from veripo_jax.buckets import bucket
from veripo_jax.data.schema import EXAMPLE_FIELDS, ROW_FIELDS
from veripo_jax.models import CausalLM, family_of
from veripo_jax.rl.losses import chunked_token_logprobs

# Prompt-batch fields with one row per prompt (the loader's `Collator` output; no responses).
_ROW_FIELDS = tuple(f for f in ROW_FIELDS if f != "response_mask") + EXAMPLE_FIELDS


@struct.dataclass
class SequenceBatch:
  inputs: Any                  # the model's inputs, (N, prompt_width + R)
  targets: jax.Array           # (N, R) response token ids
  loss_mask: jax.Array         # (N, R) 1 on real response tokens
  prompt_width: int = struct.field(pytree_node=False)
  # Responses per row (prompt sharing): N = branches x rows, branch-major; inputs hold the
  # prompt then `branches` response blocks of width R.
  branches: int = struct.field(pytree_node=False, default=1)
  # Packed branches: (rows, branches * R) column of the hidden state that predicts each target.
  columns: jax.Array | None = None


def select_prompts(batch: Mapping[str, Any], rows: Sequence[int]) -> dict:
  """The sub-batch of prompt rows `rows` (host numpy), with their own pixel rows and grids.

  Pixel rows of a batch are the videos (or images) of its rows in row order; each item owns
  t*h*w rows of its grid. Padding rows past the grids are dropped.
  """
  rows = np.asarray(rows, np.int64)
  out = {k: np.asarray(batch[k])[rows] for k in _ROW_FIELDS if k in batch}
  out["position_ids"] = np.asarray(batch["position_ids"])[:, rows]
  kinds = np.asarray(batch["data_type"])
  for kind, pixels, grid_key, extra in (("video", "pixel_values_videos", "video_grid_thw",
                                         "second_per_grid_ts"),
                                        ("image", "pixel_values", "image_grid_thw", None)):
    owners = np.flatnonzero(kinds == kind)               # batch row of each item
    grid = np.asarray(batch.get(grid_key, np.zeros((0, 3))), np.int64).reshape(-1, 3)
    if len(grid) != len(owners):
      raise ValueError(f"{grid_key} has {len(grid)} items for {len(owners)} {kind} rows")
    sizes = grid.prod(-1)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    new_row = {int(r): j for j, r in enumerate(rows)}
    order = sorted((i for i, r in enumerate(owners) if int(r) in new_row),
                   key=lambda i: new_row[int(owners[i])])
    pv = np.asarray(batch[pixels]) if len(owners) else np.zeros((0, 1), np.float32)
    out[pixels] = (np.concatenate([pv[starts[i]:starts[i + 1]] for i in order])
                   if order else np.zeros((0, pv.shape[-1]), np.float32))
    out[grid_key] = grid[order].astype(np.int32).reshape(-1, 3)
    if extra is not None:
      out[extra] = np.asarray(batch[extra], np.float32)[order]
  return out


def prompt_inputs(config, prompts: Mapping[str, Any], *, rope_mode: str = "legacy"):
  """Host-side model inputs of a prompt batch (positions as the collator computed them)."""
  return family_of(config).prepare(config, prompts, rope_mode=rope_mode)[0]


def build_sequences(config, prompts: Mapping[str, Any], owner: Sequence[int],
                    responses: np.ndarray, lengths: Sequence[int], *, rope_mode: str = "legacy",
                    pad_token_id: int | None = None, inputs: Any = None,
                    vision_features: jax.Array | None = None, branches: int = 1,
                    packed_width: int | None = None) -> SequenceBatch:
  """Host-side: prompt batch (K rows) + N responses of prompt rows `owner` -> SequenceBatch.

  `responses (N, R)` are token ids, `lengths (N,)` the real tokens of each (the rest is padding).
  Rows with length 0 carry no loss. `inputs` are the prompt batch's `prompt_inputs` when
  already computed; with `vision_features` (the tower's output for this prompt batch) the
  sequences carry those instead of the vision inputs. With `branches` b > 1, the N responses
  are b branch-major blocks over the same N / b prompt rows and share one row per prompt;
  with `packed_width` they are packed end to end into that many columns after the prompt.
  """
  owner = np.asarray(owner, np.int64)
  responses = np.asarray(responses, np.int32)
  lengths = np.asarray(lengths, np.int64)
  if responses.ndim != 2 or len(responses) != len(owner) or len(lengths) != len(owner):
    raise ValueError(f"responses {responses.shape}, owner {owner.shape} and lengths "
                     f"{lengths.shape} must agree on the number of sequences")
  if inputs is None:
    inputs = prompt_inputs(config, prompts, rope_mode=rope_mode)
  prompt = inputs
  n, r = responses.shape
  width = prompt.input_ids.shape[1]
  real = np.arange(r)[None, :] < lengths[:, None]
  pad = config.pad_token_id if pad_token_id is None else pad_token_id
  targets = np.where(real, responses, pad).astype(np.int32)
  if n % branches or np.any(owner.reshape(branches, -1) != owner[:n // branches]):
    raise ValueError(f"{branches} branches need branch-major responses over the same prompt "
                     f"rows; got owner {owner.tolist()}")
  rows = owner[:n // branches]
  next_pos = np.asarray(prompts["next_position"], np.int64)[rows]
  if packed_width is None:
    # Row-major views: (rows, branches * R), each row's branches side by side.
    side = lambda a: a.reshape(branches, len(rows), r).transpose(1, 0, 2).reshape(len(rows), -1)
    ids, mask = side(targets), side(real)
    response_pos = np.tile(next_pos[:, None] + np.arange(r), (1, branches))
    branch = np.broadcast_to(np.repeat(np.arange(1, branches + 1, dtype=np.int32), r),
                             ids.shape)
    columns = None
  else:
    ids, mask, response_pos, branch, columns = _packed(
        targets, real, lengths, next_pos, branches, width, packed_width)
  # Every rope axis (M-RoPE's three) continues from the prompt's next position.
  response_pos = np.broadcast_to(response_pos[None],
                                 prompt.position_ids.shape[:1] + response_pos.shape)
  inputs = prompt.replace(
      input_ids=np.concatenate([prompt.input_ids[rows], ids], 1),
      attention_mask=np.concatenate([prompt.attention_mask[rows], mask], 1),
      position_ids=np.concatenate([prompt.position_ids[:, rows], response_pos], 2)
      .astype(np.int32),
      feature_index=np.concatenate([prompt.feature_index[rows],
                                    np.full(ids.shape, -1, np.int32)], 1),
      vision=prompt.vision if vision_features is None else None,
      vision_features=vision_features,
      branch=None if branches == 1 and columns is None else np.concatenate(
          [np.zeros((len(rows), width), np.int32), branch], 1))
  return SequenceBatch(inputs=inputs, targets=targets, loss_mask=real.astype(np.float32),
                       prompt_width=width, branches=branches, columns=columns)


def _packed(targets: np.ndarray, real: np.ndarray, lengths: np.ndarray, next_pos: np.ndarray,
            branches: int, prompt_width: int, packed_width: int) -> tuple[np.ndarray, ...]:
  """Response columns of rows whose `branches` responses sit end to end: token ids, mask,
  positions and branch ids (rows, packed_width), and the (rows, branches * R) hidden-state
  column predicting each target (a response's first token: the prompt's last column)."""
  k, r = len(next_pos), targets.shape[1]
  length = np.minimum(lengths, r).reshape(branches, k).T                   # (rows, b)
  if length.sum(1).max(initial=0) > packed_width:
    raise ValueError(f"responses of {int(length.sum(1).max())} tokens in one row do not fit "
                     f"packed_width {packed_width}")
  start = np.cumsum(length, 1) - length                                    # (rows, b)
  t = np.arange(r)
  col = np.minimum(start[:, :, None] + t, packed_width - 1)                # (rows, b, R)
  live = real.reshape(branches, k, r).transpose(1, 0, 2)
  row, b, pos = np.nonzero(live)
  at = (row, col[row, b, pos])
  ids = np.zeros((k, packed_width), np.int32)
  ids[at] = targets.reshape(branches, k, r)[b, row, pos]
  mask = np.zeros((k, packed_width), bool)
  mask[at] = True
  positions = np.broadcast_to(next_pos[:, None], (k, packed_width)).copy()
  positions[at] = next_pos[row] + pos
  branch = np.zeros((k, packed_width), np.int32)
  branch[at] = b + 1
  columns = np.where(live & (t > 0), prompt_width + col - 1, prompt_width - 1)
  return ids, mask, positions, branch, columns.reshape(k, -1).astype(np.int32)


def response_logprobs(model: CausalLM, batch: SequenceBatch, *, remat: bool = False,
                      chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """log pi(response token) and the entropy at each response position, (N, R) fp32.

  The token at response position j is predicted from the hidden state one column earlier (a
  branch's first token from the prompt's last column); only those columns go through the LM
  head (the prompt's logits are never formed). With `chunk` C > 0 the head runs on C response
  positions at a time, recomputed per chunk in the backward (`losses.chunked_token_logprobs`):
  (N, C, V) logits at a time instead of (N, R, V); 0 (or C >= R) is the one-shot path.
  """
  h = model.hidden_states(batch.inputs, remat=remat)
  return chunked_token_logprobs(model.logits, _response_window(h, batch), batch.targets, chunk)


def _response_window(h: jax.Array, batch: SequenceBatch) -> jax.Array:
  """The hidden states (N, R, D) that predict `batch.targets`, branch-major."""
  r, b = batch.targets.shape[1], batch.branches
  if batch.columns is not None:
    window = jnp.take_along_axis(h, batch.columns[:, :, None], axis=1)   # (rows, b * R, D)
    return window.reshape(h.shape[0], b, r, -1).swapaxes(0, 1).reshape(b * h.shape[0], r, -1)
  if b == 1:
    return jax.lax.dynamic_slice_in_dim(h, batch.prompt_width - 1, r, axis=1)
  start = batch.prompt_width + r * np.arange(b)[:, None] + np.arange(r)[None] - 1
  start[:, 0] = batch.prompt_width - 1
  window = jnp.take(h, start.reshape(-1), axis=1)                         # (rows, b * R, D)
  return window.reshape(h.shape[0], b, r, -1).swapaxes(0, 1).reshape(b * h.shape[0], r, -1)


def sequence_logprob(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum of response-token log-probs per row (DPO's sequence log-probability)."""
  return jnp.sum(logp * mask, axis=-1)


def split_supervised(batch: Mapping[str, Any]) -> tuple[dict, np.ndarray, np.ndarray]:
  """A loader batch built `with_response` -> (prompt batch, responses (K, R), lengths (K,)).

  The collator appends right-padded gold responses after the left-padded prompts; the first
  column any row marks as response is the prompt width.
  """
  response_mask = np.asarray(batch["response_mask"])
  width = int(np.argmax(response_mask.any(0)))
  prompts = dict(batch)
  prompts["input_ids"] = np.asarray(batch["input_ids"])[:, :width]
  prompts["attention_mask"] = np.asarray(batch["attention_mask"])[:, :width]
  prompts["position_ids"] = np.asarray(batch["position_ids"])[:, :, :width]
  # The collator's next_position counts the response too; generation would start here.
  prompts["next_position"] = (prompts["position_ids"][:, :, -1].max(0) + 1).astype(np.int32)
  lengths = response_mask[:, width:].sum(1) * np.asarray(batch["example_mask"])
  return prompts, np.asarray(batch["input_ids"])[:, width:], lengths


def encode_vision(model: CausalLM, batch: Mapping[str, Any]) -> jax.Array:
  """The media encoder's features for `batch["vision"]` (a `Learner.evaluate` function)."""
  return model.encode_media(batch["vision"])


class SequenceBuilder:
  """Training sequences for one prompt batch, with bucketed response widths.

  With a frozen vision tower (`learner` given), the batch's features are computed once here
  and every micro-batch gathers from them (the policy's update and any reference pass alike),
  so update shapes no longer depend on which prompts a micro-batch holds. Otherwise each
  micro-batch carries its own prompts' vision inputs. With `patch_buckets`, vision inputs are
  padded to those buckets (`coarsen_vision`), so a stage compiles a few programs, not one for
  every mix of media. With `packed_width`, each row's branches are packed end to end into
  that many columns (`build_sequences`).
  """

  def __init__(self, config, prompts: Mapping[str, Any], *,
               response_buckets: Sequence[int], rope_mode: str = "legacy", learner=None,
               patch_buckets: Sequence[int] | None = None, branches: int = 1,
               packed_width: int | None = None):
    self.config, self.prompts, self.branches = config, prompts, branches
    self.packed_width = packed_width
    self.response_buckets = tuple(response_buckets)
    self.patch_buckets = None if patch_buckets is None else tuple(patch_buckets)
    self.rope_mode = rope_mode
    self.inputs, self.features = None, None
    if learner is not None:
      self.inputs = self._coarse(prompt_inputs(config, prompts, rope_mode=rope_mode))
      if self.inputs.vision is not None:
        self.features = learner.evaluate(encode_vision, {"vision": self.inputs.vision})

  def generation_inputs(self) -> tuple[Any, np.ndarray] | None:
    """(prompt inputs, next positions) for `generate` from this builder's preparation, with
    the tower's features in place of the vision inputs: sampling the batch and training on
    it then prepare its prompts and encode its media once. None when the micro-batches carry
    their own vision inputs (a trained tower)."""
    if self.inputs is None:
      return None
    inputs = self.inputs
    if self.features is not None:
      inputs = inputs.replace(vision=None, vision_features=self.features)
    return inputs, np.asarray(self.prompts["next_position"], np.int32)

  def _coarse(self, inputs):
    if self.patch_buckets is None:
      return inputs
    return family_of(self.config).coarsen(self.config, inputs, self.patch_buckets)

  def __call__(self, rows: Sequence[int], owner: Sequence[int], responses: np.ndarray,
               lengths: Sequence[int]) -> SequenceBatch:
    """Responses of prompt rows `rows`; `owner[i]` is the position in `rows` of response i."""
    rows, owner = np.asarray(rows, np.int64), np.asarray(owner, np.int64)
    lengths = np.asarray(lengths, np.int64)
    width = bucket(max(1, int(lengths.max(initial=1))), self.response_buckets)
    padded = np.full((len(owner), width), self.config.pad_token_id, np.int32)
    take = min(width, responses.shape[1])
    padded[:, :take] = responses[:, :take]
    if self.inputs is not None:
      return build_sequences(self.config, self.prompts, rows[owner], padded, lengths,
                             rope_mode=self.rope_mode, inputs=self.inputs,
                             vision_features=self.features, branches=self.branches,
                             packed_width=self.packed_width)
    seq = build_sequences(self.config, select_prompts(self.prompts, rows), owner, padded,
                          lengths, rope_mode=self.rope_mode, branches=self.branches,
                          packed_width=self.packed_width)
    return seq.replace(inputs=self._coarse(seq.inputs))
