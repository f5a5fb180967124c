"""The benchmark evaluation loop: the authors' protocol, resumable batch by batch.

Items of a benchmark are taken in file order in windows of `sort_window` batches; a window's
videos are decoded (each host decodes its share, the batch is gathered on every host), sorted
by prompt length (little padding) and cut into fixed batches. Each batch is generated greedily
with the repetition penalty, scored by the authors' rules (`eval.scoring`), judged (when a
judge is configured) and appended to `predictions.jsonl` in one flushed write. A re-run skips
the batches whose items are all recorded, so a kill loses at most the batch in flight, and the
batches are the same ones, so a resumed run writes exactly the file of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from absl import logging

from veripo_jax.buckets import bucket
from veripo_jax.data.errors import BadExampleError
from veripo_jax.data.vision import VisionSettings, VisualInput, process_image, process_video
from veripo_jax.eval.benchmarks import (BENCHMARK_FPS, DEFAULT_FPS, SHIPPED_BENCHMARKS,
                                        BenchmarkData, EvalItem, load_benchmark, question_file,
                                        shipped_questions_dir)
from veripo_jax.eval.prompts import EvalPromptEncoder
from veripo_jax.eval.scoring import official_score
from veripo_jax.fileio import (append_jsonl, drop_partial_last_line, read_jsonl,
                               write_jsonl_atomic)
from veripo_jax.inference import generate
from veripo_jax.parallel.multihost import allgather_objects
from veripo_jax.rl.answers import parse_response, rule_consistent
from veripo_jax.rl.verifier import CONSISTENT, INCONSISTENT, UNKNOWN, parse_verdict
from veripo_jax.train.metrics import progress

PREDICTIONS_FILE = "predictions.jsonl"


@dataclasses.dataclass(frozen=True)
class BenchmarkEvalConfig:
  """The protocol's settings are the defaults (../shared/reference/veripo_eval_protocol.md)."""
  benchmarks: str = ",".join(SHIPPED_BENCHMARKS)   # shipped question files, comma-separated
  questions_dir: str = ""          # "": the files shipped in veripo_jax/eval/questions
  # Other question files (the shipped format or Video-R1's), "name=path,name2=path2".
  files: str = ""
  video_root: str = ""             # video paths in the files are relative to it
  template: str = "veripo"         # or "video_r1" (Video-R1's THINK prompt)
  batch_size: int = 8              # prompts per generate call (global, all hosts)
  sort_window: int = 8             # batches whose items are sorted by prompt length together
  prompt_buckets: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768)
  max_new_tokens: int = 4096
  repetition_penalty: float = 1.05
  fps: float = 0.0                 # 0: the protocol's (2; TOMATO 4)
  max_frames: int = 128
  max_pixels: int = 256 * 28 * 28  # per frame
  max_items: int = 0               # per benchmark, 0: all (a quick look)

  def __post_init__(self):
    for name in ("batch_size", "sort_window", "max_new_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.repetition_penalty <= 0:
      raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
    self.question_files()

  def question_files(self) -> dict[str, str]:
    """Benchmark name -> question file (shipped names, then `files`)."""
    out = {}
    questions = self.questions_dir or shipped_questions_dir()
    for name in filter(None, (n.strip() for n in self.benchmarks.split(","))):
      if name not in SHIPPED_BENCHMARKS:
        raise ValueError(f"benchmarks: unknown {name!r}; the shipped ones are "
                         f"{list(SHIPPED_BENCHMARKS)} (other files go in `files` as name=path)")
      out[name] = question_file(name, questions)
    for entry in filter(None, (e.strip() for e in self.files.split(","))):
      name, sep, path = entry.partition("=")
      if not sep or not name or not path:
        raise ValueError(f"files: {entry!r} is not name=path")
      out[name.strip()] = path.strip()
    return out


@dataclasses.dataclass
class Prepared:
  """One item ready to batch (or the reason it cannot be)."""
  item: EvalItem
  prompt_ids: np.ndarray | None = None
  video: VisualInput | None = None
  image: VisualInput | None = None
  error: str = ""


def prompt_hash(ids: np.ndarray | None) -> str:
  return "" if ids is None else hashlib.sha1(np.asarray(ids, np.int32).tobytes()).hexdigest()[:16]


def vision_settings(cfg: BenchmarkEvalConfig, base: VisionSettings, item: EvalItem
                    ) -> VisionSettings:
  fps = cfg.fps or item.fps or BENCHMARK_FPS.get(item.benchmark, DEFAULT_FPS)
  return dataclasses.replace(base, fps=fps, max_frames=cfg.max_frames,
                             video_max_pixels=cfg.max_pixels)


def prepare_item(item: EvalItem, cfg: BenchmarkEvalConfig, base: VisionSettings,
                 encoder: EvalPromptEncoder) -> Prepared:
  """Decodes the item's media and builds its prompt; a broken video is an error, not a crash."""
  try:
    video = process_video(item.video, vision_settings(cfg, base, item))
    image = None if item.image is None else process_image(item.image, base)
  except BadExampleError as e:
    return Prepared(item, error=str(e))
  return Prepared(item, encoder.prompt_ids(item, video, image), video, image)


def batches(items: Sequence[EvalItem], cfg: BenchmarkEvalConfig,
            prepare: Callable[[EvalItem], Prepared], done: set[str]) -> Iterator[list[Prepared]]:
  """Fixed batches of prepared items: file-order windows, each sorted by prompt length.

  A window whose items are all `done` is not decoded again; each host prepares every H-th
  item of a window and the window is gathered on every host.
  """
  size = cfg.batch_size * cfg.sort_window
  host, hosts = jax.process_index(), jax.process_count()
  for start in range(0, len(items), size):
    window = items[start:start + size]
    if all(i.question_id in done for i in window):
      continue
    mine = [prepare(item) for item in window[host::hosts]]
    shares = allgather_objects(mine)
    prepared = [shares[k % hosts][k // hosts] for k in range(len(window))]
    prepared.sort(key=lambda p: (0 if p.prompt_ids is None else len(p.prompt_ids), p.item.index))
    for b in range(0, len(prepared), cfg.batch_size):
      chunk = prepared[b:b + cfg.batch_size]
      if not all(p.item.question_id in done for p in chunk):
        yield chunk


def collate(rows: Sequence[Prepared], rows_per_batch: int, pad_id: int,
            buckets: Sequence[int]) -> dict[str, np.ndarray]:
  """Left-padded prompts and their media; rows past `rows` are one pad token (fixed shapes)."""
  width = bucket(max(len(r.prompt_ids) for r in rows), buckets)
  ids = np.full((rows_per_batch, width), pad_id, np.int32)
  mask = np.zeros((rows_per_batch, width), np.int32)
  mask[len(rows):, -1] = 1
  for i, r in enumerate(rows):
    ids[i, width - len(r.prompt_ids):] = r.prompt_ids
    mask[i, width - len(r.prompt_ids):] = 1
  batch = {"input_ids": ids, "attention_mask": mask}
  for kind, pixels, grid, extra in (("video", "pixel_values_videos", "video_grid_thw",
                                     "second_per_grid_ts"),
                                    ("image", "pixel_values", "image_grid_thw", None)):
    media = [getattr(r, kind) for r in rows if getattr(r, kind) is not None]
    if media:
      batch[pixels] = np.concatenate([m.pixel_values for m in media])
      batch[grid] = np.stack([np.asarray(m.grid_thw, np.int32) for m in media])
      if extra:
        batch[extra] = np.array([m.second_per_grid_t for m in media], np.float32)
  return batch


def response_record(p: Prepared, response: str, length: int, truncated: bool) -> dict:
  """A prediction line: the response, its official score and its rule verdict."""
  parsed = parse_response(response)
  consistent = (rule_consistent(parsed.think, parsed.answer, p.item.options or None)
                if parsed.think and parsed.answer else None)
  return {"benchmark": p.item.benchmark, "question_id": p.item.question_id,
          "prompt_hash": prompt_hash(p.prompt_ids), "response": response,
          "score": official_score(response, p.item.answer, p.item.benchmark),
          "length": int(length), "truncated": bool(truncated),
          "answer_kind": p.item.answer_kind,
          "has_reasoning": bool(parsed.think and parsed.answer), "rule_consistent": consistent}


def judge_records(records: list[dict], judge) -> None:
  """Adds the judge's verdict to responses with reasoning and an answer; a failed or unreadable
  reply falls back to the rule (`judge_fallback`)."""
  parsed = [parse_response(r["response"]) for r in records]
  todo = [i for i, p in enumerate(parsed) if p.think and p.answer]
  replies = judge.verdicts([(parsed[i].think, parsed[i].answer) for i in todo]) if todo else []
  for i, reply in zip(todo, replies):
    verdict = parse_verdict(reply)
    fallback = verdict == UNKNOWN
    if fallback:
      verdict = CONSISTENT if records[i]["rule_consistent"] is True else INCONSISTENT
    records[i].update(judge_verdict=verdict, judge_fallback=fallback)


def read_predictions(path: str) -> list[dict]:
  """The recorded predictions, less a batch a crash left incomplete (those lines are removed
  from the file, so its re-run appends the whole batch once)."""
  if not os.path.exists(path):
    return []
  drop_partial_last_line(path)
  records = read_jsonl(path)
  if records and len(records) < records[-1]["batch_size"] + _last_batch_start(records):
    records = records[:_last_batch_start(records)]
    if jax.process_index() == 0:
      write_jsonl_atomic(path, records)
  return records


def _last_batch_start(records: list[dict]) -> int:
  key = records[-1]["batch"]
  start = len(records)
  while start and records[start - 1]["batch"] == key:
    start -= 1
  return start


@dataclasses.dataclass
class EvalContext:
  """What evaluating one benchmark needs besides its items."""
  model: Any
  tokenizer: Any
  encoder: EvalPromptEncoder
  vision: VisionSettings
  mesh: Any
  rules: tuple
  eos_token_ids: tuple[int, ...]
  pad_token_id: int
  judge: Any = None
  should_stop: Callable[[], bool] = lambda: False


def evaluate_benchmark(data: BenchmarkData, cfg: BenchmarkEvalConfig, ectx: EvalContext,
                       path: str) -> int:
  """Appends the predictions of `data`'s unrecorded items to `path`; returns how many."""
  done = {r["question_id"] for r in read_predictions(path) if r["benchmark"] == data.name}
  items = list(data.items[:cfg.max_items] if cfg.max_items else data.items)
  todo = sum(i.question_id not in done for i in items)
  if not todo:
    return 0
  prepare = lambda item: prepare_item(item, cfg, ectx.vision, ectx.encoder)
  written = 0
  bar = progress(batches(items, cfg, prepare, done), total=todo, desc=f"eval {data.name}",
                 unit="item", size=lambda chunk: sum(p.item.question_id not in done
                                                     for p in chunk))
  for chunk in bar:
    records = [{"benchmark": p.item.benchmark, "question_id": p.item.question_id,
                "skipped": p.error} for p in chunk if p.prompt_ids is None]
    rows = [p for p in chunk if p.prompt_ids is not None]
    if rows:
      records += generate_records(rows, cfg, ectx)
    key = f"{data.name}/{chunk[0].item.question_id}"
    for r in records:
      r.update(batch=key, batch_size=len(records))
    if jax.process_index() == 0:
      append_jsonl(path, records)
    written += len(records)
    if ectx.should_stop():
      break
  return written


def generate_records(rows: list[Prepared], cfg: BenchmarkEvalConfig, ectx: EvalContext
                     ) -> list[dict]:
  batch = collate(rows, cfg.batch_size, ectx.pad_token_id, cfg.prompt_buckets)
  out = generate(ectx.model, batch, cfg.max_new_tokens, temperature=0.0,
                 repetition_penalty=cfg.repetition_penalty, eos_token_ids=ectx.eos_token_ids,
                 pad_token_id=ectx.pad_token_id, mesh=ectx.mesh, rules=ectx.rules)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  records = []
  for i, p in enumerate(rows):
    n = int(lengths[i])
    ended = n > 0 and int(tokens[i, n - 1]) in ectx.eos_token_ids
    text = ectx.tokenizer.decode(tokens[i, :n].tolist(), skip_special_tokens=True)
    records.append(response_record(p, text, n, truncated=not ended))
  if ectx.judge is not None:
    judge_records(records, ectx.judge)
  return records


def load_all(cfg: BenchmarkEvalConfig) -> list[BenchmarkData]:
  """Every configured benchmark's items; the log gets one summary line each."""
  out = []
  for name, path in cfg.question_files().items():
    data = load_benchmark(name, path, cfg.video_root)
    logging.info("%s", data.summary())
    out.append(data)
  return out
