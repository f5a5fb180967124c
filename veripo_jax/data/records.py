"""Question files a user brings -> validated records with one schema.

Two formats (reference/veripo_method.md §7): Video-R1-style JSON/JSONL (problem, data_type,
problem_type, options, solution, path) and the VerIPO evaluation files (question_id, video_path,
question, answer, processed_question[, options]). Every record becomes

    {"id", "data_type", "problem_type", "problem", "options", "answer", "reasoning", "media_path",
     "where"}

where `where` is "file:line" (JSONL) or "file[item]" (JSON) for error messages downstream.
Malformed input raises `DataFormatError` naming the file and the line/item and field.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator

from veripo_jax.data.errors import DataFormatError

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
DATA_TYPES = ("video", "image", "text")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _iter_json_items(path: str) -> Iterator[tuple[str, Any]]:
  """(where, item) for a JSON list or a JSONL file; decode errors name the line."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if path.endswith(".jsonl"):
    for lineno, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        yield f"{path}:{lineno}", json.loads(line)
      except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{lineno}: malformed JSON line: {e.msg}") from e
    return
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataFormatError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from e
  if not isinstance(data, list):
    raise DataFormatError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
  for i, item in enumerate(data):
    yield f"{path}[{i}]", item


def _field(item: dict, name: str, where: str, kind: type | tuple[type, ...] = str):
  if name not in item or item[name] is None:
    raise DataFormatError(f"{where}: missing required field '{name}'")
  value = item[name]
  if not isinstance(value, kind):
    kinds = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise DataFormatError(f"{where}: field '{name}' must be {kinds}, got {type(value).__name__}")
  return value


def _choice(value: str, allowed: tuple[str, ...], name: str, where: str) -> str:
  if value not in allowed:
    raise DataFormatError(f"{where}: unknown {name} {value!r}; expected one of {list(allowed)}")
  return value


def _as_dict(item: Any, where: str) -> dict:
  if not isinstance(item, dict):
    raise DataFormatError(f"{where}: expected a JSON object, got {type(item).__name__}")
  return item


def read_video_r1(path: str | os.PathLike) -> list[dict]:
  """Records from a Video-R1-style JSON list or JSONL file."""
  path = os.fspath(path)
  records = []
  for where, item in _iter_json_items(path):
    item = _as_dict(item, where)
    data_type = _choice(_field(item, "data_type", where), DATA_TYPES, "data_type", where)
    problem_type = _choice(_field(item, "problem_type", where), PROBLEM_TYPES, "problem_type",
                           where)
    options = item.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
      raise DataFormatError(f"{where}: field 'options' must be a list of strings")
    if problem_type == "multiple choice" and not options:
      raise DataFormatError(f"{where}: missing required field 'options' (multiple choice)")
    solution = _field(item, "solution", where)
    match = _ANSWER_TAG.search(solution)
    records.append(dict(
        id=str(item.get("problem_id", item.get("id", where))),
        data_type=data_type, problem_type=problem_type,
        problem=_field(item, "problem", where), options=options,
        answer=(match.group(1) if match else solution).strip(),
        reasoning=str(item.get("reasoning", "")),
        media_path="" if data_type == "text" else _field(item, "path", where), where=where))
  return records


def read_veripo_eval(path: str | os.PathLike) -> list[dict]:
  """Records from a VerIPO evaluation question file (shared/benchmarks/veripo_eval format).

  A letter answer makes a multiple-choice item, anything else (VSI-Bench counts, distances) a
  regression item scored by MRA. `processed_question` already lists the options, so it is the
  problem text and `options` stays empty.
  """
  path = os.fspath(path)
  records = []
  for where, item in _iter_json_items(path):
    item = _as_dict(item, where)
    answer = str(_field(item, "answer", where, (str, int, float))).strip()
    is_letter = len(answer) == 1 and answer.isalpha() and answer.isupper()
    records.append(dict(
        id=str(_field(item, "question_id", where, (str, int))), data_type="video",
        problem_type="multiple choice" if is_letter else "regression",
        problem=_field(item, "processed_question", where), options=[], answer=answer,
        reasoning="", media_path=_field(item, "video_path", where), where=where))
  return records


READERS = {"video_r1": read_video_r1, "veripo_eval": read_veripo_eval}
