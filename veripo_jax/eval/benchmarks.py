"""Benchmark question files -> `EvalItem`s, with the videos that are absent counted.

Two formats (reference/veripo_eval_protocol.md):

  veripo    the VerIPO authors' question files, shipped for vsi_bench, mmvu, tomato, lvbench and
            video_mme: a JSON list of {question_id, video_path, question, answer,
            processed_question[, options, scene_name, image]}; `image` is a base64 picture shown
            after the video (VideoMMMU style). A letter answer is a multiple-choice item, anything
            else a number (VSI-Bench's counts and distances, scored by MRA).
  video_r1  Video-R1's eval files (`eval_<bench>.json`, read by its `src/eval_bench.py`): a JSON
            list (or JSONL) of {problem_id?, problem, data_type, problem_type, options, solution
            "<answer>X</answer>", path "./<Bench>/..."}; `path` is relative to the directory the
            files sit in (Video-R1's `src/r1-v/Evaluation`), the `video_root` here.

Both become one `EvalItem` whose `question` is the text a prompt template puts in its question
slot: VerIPO's `processed_question` (the prompt deletes its "Answer with the option's letter"
line), or Video-R1's `problem` followed, for multiple choice, by "Options:\\n" and one line per
option, exactly as Video-R1 builds it.

Malformed input raises `DataFormatError` (a ValueError) naming the file, the item index and the
field; videos that are not on disk are counted, never raised one by one (DESIGN.md: a missing
video is skipped and counted).
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import os
import re
from typing import Any, Mapping

from veripo_jax.data.errors import DataFormatError
from veripo_jax.data.records import _field, _iter_json_items

SHIPPED_BENCHMARKS = ("vsi_bench", "mmvu", "tomato", "lvbench", "video_mme")
FORMATS = ("veripo", "video_r1")
ANSWER_KINDS = ("option", "number")

DEFAULT_FPS = 2.0
BENCHMARK_FPS = {"tomato": 4.0}       # the authors sample TOMATO at 4 fps, every other at 2

# What to do when question_ids repeat: "error", or "number" (every item of a repeated id becomes
# "<id>#1", "<id>#2", ... in file order). TOMATO's question_id names the clip, and 62 of its clips
# carry 2-3 different questions (151 items), so the shipped file needs "number". Items that
# repeat an id AND the same question on the same video are an error under either policy.
DUPLICATE_ID_POLICIES = ("error", "number")
DEFAULT_DUPLICATE_IDS = {"tomato": "number"}

_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_DATA_URL = re.compile(r"^data:[^;,]*;base64,")
_KIND_BY_PROBLEM_TYPE = {"multiple choice": "option", "numerical": "number",
                         "regression": "number"}


@dataclasses.dataclass(frozen=True)
class EvalItem:
  """One benchmark question, normalised from either file format."""
  benchmark: str
  question_id: str            # unique within the benchmark (see DEFAULT_DUPLICATE_IDS)
  video: str                  # absolute path under the video root (may not exist: see missing)
  question: str               # the template's {Question} text (see the module docstring)
  answer: str                 # gold answer: a letter, or a number as written in the file
  answer_kind: str            # "option" (alphabetic answer) or "number"
  problem_type: str           # Video-R1's: "multiple choice", "numerical" or "regression"
  fps: float                  # frame sampling rate: 2.0, TOMATO 4.0
  source_format: str          # "veripo" or "video_r1"
  index: int                  # position in the question file
  source_id: str              # question_id / problem_id as written in the file
  raw_question: str = ""      # VerIPO's `question` / Video-R1's `problem`, without options
  options: tuple[str, ...] = ()
  image: bytes | None = None  # decoded picture shown after the video (VideoMMMU style)
  scene_name: str | None = None

  @property
  def is_option(self) -> bool:
    return self.answer_kind == "option"


@dataclasses.dataclass(frozen=True)
class BenchmarkData:
  """The items of one question file: those whose video exists, and those left out."""
  name: str
  path: str
  video_root: str
  source_format: str
  items: tuple[EvalItem, ...]              # the items whose video exists, in file order
  missing_items: tuple[EvalItem, ...] = ()  # the items whose video is not a file, in file order
  renumbered: int = 0                      # items whose repeated question_id got a "#k" suffix

  @property
  def missing(self) -> int:
    return len(self.missing_items)

  @property
  def total(self) -> int:
    return len(self.items) + len(self.missing_items)

  def summary(self) -> str:
    """One line for the log: counts, and a few absent videos rather than all of them."""
    text = f"{self.name}: {len(self.items)} of {self.total} items have their video"
    if self.missing_items:
      videos = dict.fromkeys(os.path.relpath(i.video, self.video_root) for i in self.missing_items)
      examples = ", ".join(list(videos)[:3])
      text += (f"; {self.missing} skipped, {len(videos)} video(s) not found under "
               f"{self.video_root} (e.g. {examples})")
    return text


def shipped_questions_dir() -> str:
  """The authors' question files, shipped with the package (`veripo_jax/eval/questions`)."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "questions")


def question_file(name: str, questions_dir: str | os.PathLike) -> str:
  """The question file of shipped benchmark `name` in `questions_dir` (`<name>.json`)."""
  if name not in SHIPPED_BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; the shipped ones are "
                     f"{list(SHIPPED_BENCHMARKS)} (give a question file path for others)")
  path = os.path.join(os.fspath(questions_dir), f"{name}.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: question file of benchmark {name!r} not found "
                            f"(questions_dir={os.fspath(questions_dir)!r})")
  return path


def detect_format(item: Any, where: str) -> str:
  if isinstance(item, Mapping):
    if "processed_question" in item or "video_path" in item:
      return "veripo"
    if "problem" in item or "solution" in item:
      return "video_r1"
  raise DataFormatError(f"{where}: neither a VerIPO question (question_id, video_path, "
                        f"processed_question, answer) nor a Video-R1 one (problem, solution, "
                        f"path, problem_type)")


def load_benchmark(name: str, path: str | os.PathLike, video_root: str | os.PathLike, *,
                   source_format: str = "auto", fps: float | None = None,
                   duplicate_ids: str | None = None) -> BenchmarkData:
  """Reads a question file, resolves videos under `video_root` and counts the absent ones.

  `source_format`: "veripo", "video_r1" or "auto" (from the first item's fields). `fps`
  overrides the benchmark's sampling rate; `duplicate_ids` the policy for repeated ids
  (default: DEFAULT_DUPLICATE_IDS.get(name, "error")).
  """
  path = os.fspath(path)
  video_root = os.path.abspath(os.fspath(video_root))
  entries = list(_iter_json_items(path))
  if not entries:
    raise DataFormatError(f"{path}: the question file has no items")
  if source_format == "auto":
    source_format = detect_format(entries[0][1], entries[0][0])
  elif source_format not in FORMATS:
    raise ValueError(f"unknown question-file format {source_format!r}; choose from "
                     f"{list(FORMATS)} or 'auto'")
  fps = float(fps if fps is not None else BENCHMARK_FPS.get(name, DEFAULT_FPS))
  read = _read_veripo if source_format == "veripo" else _read_video_r1
  items = []
  for index, (where, raw) in enumerate(entries):
    if not isinstance(raw, Mapping):
      raise DataFormatError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    fields = read(raw, where, index, video_root)
    items.append(EvalItem(benchmark=name, fps=fps, source_format=source_format, index=index,
                          **fields))
  policy = duplicate_ids or DEFAULT_DUPLICATE_IDS.get(name, "error")
  items, renumbered = _unique_ids(items, path, policy)

  exists: dict[str, bool] = {}
  present, absent = [], []
  for item in items:
    if item.video not in exists:
      exists[item.video] = os.path.isfile(item.video)
    (present if exists[item.video] else absent).append(item)
  return BenchmarkData(name=name, path=path, video_root=video_root,
                       source_format=source_format, items=tuple(present),
                       missing_items=tuple(absent), renumbered=renumbered)


def _video_path(video_root: str, relative: str) -> str:
  if relative.startswith("./"):
    relative = relative[2:]
  return os.path.normpath(os.path.join(video_root, relative))


def _decode_image(value: Any, where: str) -> bytes:
  if not isinstance(value, str):
    raise DataFormatError(f"{where}: field 'image' must be a base64 string, "
                          f"got {type(value).__name__}")
  try:
    return base64.b64decode(_DATA_URL.sub("", value.strip()), validate=True)
  except (binascii.Error, ValueError) as e:
    raise DataFormatError(f"{where}: field 'image' is not valid base64: {e}") from e


def _read_veripo(raw: Mapping, where: str, index: int, video_root: str) -> dict:
  del index
  answer = str(_field(raw, "answer", where, (str, int, float))).strip()
  if not answer:
    raise DataFormatError(f"{where}: field 'answer' is empty")
  is_option = answer.isalpha()
  options = raw.get("options") or []
  if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
    raise DataFormatError(f"{where}: field 'options' must be a list of strings")
  image = raw.get("image")
  scene = raw.get("scene_name")
  return dict(
      question_id=str(_field(raw, "question_id", where, (str, int))),
      video=_video_path(video_root, _field(raw, "video_path", where)),
      question=_field(raw, "processed_question", where),
      answer=answer, answer_kind="option" if is_option else "number",
      problem_type="multiple choice" if is_option else "regression",
      source_id=str(raw["question_id"]), raw_question=_field(raw, "question", where),
      options=tuple(options), image=None if image in (None, "") else _decode_image(image, where),
      scene_name=None if scene is None else str(scene))


def _read_video_r1(raw: Mapping, where: str, index: int, video_root: str) -> dict:
  data_type = _field(raw, "data_type", where)
  if data_type != "video":
    raise DataFormatError(f"{where}: data_type {data_type!r} is not evaluated; only video "
                          f"questions are")
  problem_type = _field(raw, "problem_type", where)
  if problem_type not in _KIND_BY_PROBLEM_TYPE:
    raise DataFormatError(f"{where}: problem_type {problem_type!r} has no scoring rule here; "
                          f"expected one of {list(_KIND_BY_PROBLEM_TYPE)}")
  problem = _field(raw, "problem", where)
  options = raw.get("options") or []
  if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
    raise DataFormatError(f"{where}: field 'options' must be a list of strings")
  question = problem
  if problem_type == "multiple choice":
    if not options:
      raise DataFormatError(f"{where}: missing required field 'options' (multiple choice)")
    # Video-R1's eval_bench.py: no newline between the problem and "Options:".
    question = problem + "Options:\n" + "".join(o + "\n" for o in options)
  solution = _field(raw, "solution", where)
  match = _ANSWER_TAG.search(solution)
  answer = (match.group(1) if match else solution).strip()
  if not answer:
    raise DataFormatError(f"{where}: field 'solution' has an empty answer")
  pid = raw.get("problem_id")
  if pid is not None and not isinstance(pid, (str, int)):
    raise DataFormatError(f"{where}: field 'problem_id' must be str/int, got "
                          f"{type(pid).__name__}")
  source_id = str(index if pid is None else pid)
  return dict(
      question_id=source_id, video=_video_path(video_root, _field(raw, "path", where)),
      question=question, answer=answer, answer_kind=_KIND_BY_PROBLEM_TYPE[problem_type],
      problem_type=problem_type, source_id=source_id, raw_question=problem,
      options=tuple(options))


def _unique_ids(items: list[EvalItem], path: str, policy: str) -> tuple[list[EvalItem], int]:
  if policy not in DUPLICATE_ID_POLICIES:
    raise ValueError(f"unknown duplicate_ids policy {policy!r}; choose from "
                     f"{list(DUPLICATE_ID_POLICIES)}")
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for i, item in enumerate(items):
    groups[item.question_id].append(i)
  repeated = {qid: idx for qid, idx in groups.items() if len(idx) > 1}
  if not repeated:
    return items, 0

  def describe(ids: dict[str, list[int]]) -> str:
    shown = [f"{qid!r} (items {', '.join(map(str, idx))})" for qid, idx in list(ids.items())[:5]]
    more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
    return f"{len(ids)} question_id(s) repeat: {'; '.join(shown)}{more}"

  if policy == "error":
    raise DataFormatError(f"{path}: {describe(repeated)}; question_ids must be unique "
                          f"(duplicate_ids='number' numbers distinct questions that share one)")
  same = {qid: idx for qid, idx in repeated.items()
          if len({(items[i].question, items[i].video) for i in idx}) < len(idx)}
  if same:
    raise DataFormatError(f"{path}: the same question on the same video appears more than once "
                          f"— {describe(same)}")
  out = list(items)
  for qid, idx in repeated.items():
    for k, i in enumerate(idx, 1):
      out[i] = dataclasses.replace(items[i], question_id=f"{qid}#{k}")
  clash = collections.Counter(item.question_id for item in out)
  clash = {qid: [i for i, it in enumerate(out) if it.question_id == qid]
           for qid, n in clash.items() if n > 1}
  if clash:
    raise DataFormatError(f"{path}: numbering repeated ids collides with existing ids: "
                          f"{describe(clash)}")
  return out, sum(len(idx) for idx in repeated.values())
