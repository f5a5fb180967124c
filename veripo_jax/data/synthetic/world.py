"""The synthetic verifiable video-QA world: scenes of moving coloured shapes and questions about
them with exact gold answers and a templated step-by-step reasoning that reaches the answer.

Everything is a pure function of (seed, split, index), so datasets rebuild bit-identically, any
example can be regenerated alone, and the text of an example never needs its video rendered.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
LETTERS = "ABCDEFGHIJ"
VIDEO_TASKS = ("direction", "first_appearance", "count", "visible_frames")
IMAGE_TASKS = ("image_count", "image_color")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Every knob of the world; defaults give 8-frame 112x112 clips at 2 fps."""
  width: int = 112
  height: int = 112
  fps: int = 2
  num_frames: int = 8
  shape_size: int = 16
  min_speed: int = 4                   # pixels per frame
  max_speed: int = 8
  colors: tuple[tuple[str, tuple[int, int, int]], ...] = (
      ("red", (230, 40, 40)), ("green", (40, 200, 60)), ("blue", (50, 80, 240)),
      ("yellow", (240, 220, 40)), ("white", (245, 245, 245)))
  shapes: tuple[str, ...] = ("circle", "square", "triangle")
  # Objects per scene at difficulty 1, 2, 3.
  objects_per_level: tuple[tuple[int, int], ...] = ((1, 2), (2, 3), (3, 5))
  # Share of examples per data type; the rest of the mass goes to video.
  image_fraction: float = 0.2
  text_fraction: float = 0.2
  video_tasks: tuple[str, ...] = VIDEO_TASKS
  image_tasks: tuple[str, ...] = IMAGE_TASKS
  codec: str = "libx264"
  crf: int = 18
  tokenizer_vocab_size: int = 1024
  tokenizer_corpus_examples: int = 3000
  tokenizer_template_weight: int = 50   # copies of each prompt template in the BPE corpus
  # The warm-start teacher's lapses (`teacher.py`): shares of the question examples whose
  # reasoning concludes another answer than the (correct) answer tag, or stops before concluding.
  unsupported_conclusion_share: float = 0.0
  unfinished_reasoning_share: float = 0.0

  def __post_init__(self):
    if self.max_speed * (self.num_frames - 1) + self.shape_size >= min(self.width, self.height):
      raise ValueError("WorldConfig: a shape moving max_speed for num_frames-1 frames must fit "
                       f"in the {self.width}x{self.height} frame")
    if self.num_frames < 2:
      raise ValueError("WorldConfig.num_frames must be at least 2")
    lapses = (self.unsupported_conclusion_share, self.unfinished_reasoning_share)
    if min(lapses) < 0 or sum(lapses) > 1:
      raise ValueError("WorldConfig: unsupported_conclusion_share and unfinished_reasoning_share "
                       f"must be >= 0 and sum to at most 1; got {lapses}")

  @property
  def levels(self) -> int:
    return len(self.objects_per_level)


@dataclasses.dataclass(frozen=True)
class Thing:
  """One shape: visible on frames [appear, vanish), moving `speed` px/frame in `direction`."""
  shape: str
  color: str
  appear: int
  vanish: int
  x: int                               # centre at the first visible frame
  y: int
  direction: str
  speed: int

  @property
  def name(self) -> str:
    return f"{self.color} {self.shape}"

  @property
  def frames_visible(self) -> int:
    return self.vanish - self.appear

  def position(self, frame: int) -> tuple[int, int]:
    dx, dy = DIRECTIONS[self.direction]
    step = (frame - self.appear) * self.speed
    return self.x + dx * step, self.y + dy * step


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _thing(rng: np.random.Generator, cfg: WorldConfig, shape: str, color: str,
           static: bool) -> Thing:
  frames = cfg.num_frames
  appear = 0 if static else int(rng.integers(0, frames - 1))
  vanish = frames if static else int(rng.integers(appear + 2, frames + 1))
  direction = str(rng.choice(list(DIRECTIONS)))
  speed = 0 if static else int(rng.integers(cfg.min_speed, cfg.max_speed + 1))
  travel = speed * (vanish - appear - 1)
  r = cfg.shape_size // 2
  dx, dy = DIRECTIONS[direction]
  # Keep the whole path inside the frame.
  x_lo, x_hi = r + max(0, -dx * travel), cfg.width - r - 1 - max(0, dx * travel)
  y_lo, y_hi = r + max(0, -dy * travel), cfg.height - r - 1 - max(0, dy * travel)
  return Thing(shape, color, appear, vanish, int(rng.integers(x_lo, x_hi + 1)),
               int(rng.integers(y_lo, y_hi + 1)), direction, speed)


def make_scene(rng: np.random.Generator, cfg: WorldConfig, level: int,
               static: bool = False) -> list[Thing]:
  """Distinct (colour, shape) objects, so every reference in a question is unambiguous."""
  lo, hi = cfg.objects_per_level[level - 1]
  combos = [(s, c) for s in cfg.shapes for c, _ in cfg.colors]
  count = int(rng.integers(lo, min(hi, len(combos)) + 1))
  picks = rng.choice(len(combos), size=count, replace=False)
  return [_thing(rng, cfg, *combos[i], static=static) for i in picks]


def _lettered(rng: np.random.Generator, options: list[str], correct: str):
  order = [options[i] for i in rng.permutation(len(options))]
  labelled = [f"{LETTERS[i]}. {o}" for i, o in enumerate(order)]
  return labelled, LETTERS[order.index(correct)]


def _mc(problem, options, answer, reasoning, task):
  return dict(problem_type="multiple choice", problem=problem, options=options, answer=answer,
              reasoning=reasoning, task=task)


def _value(problem_type, problem, answer, reasoning, task):
  return dict(problem_type=problem_type, problem=problem, options=[], answer=str(answer),
              reasoning=reasoning, task=task)


def conclude(answer) -> str:
  """The closing sentence of every world reasoning: the chain's last state is the answer, stated
  with the explicit cue the verifier's rule reads (`rl.answers.stated_answer`)."""
  return f"So the answer is {answer}."


def ask_direction(rng, things: list[Thing], cfg: WorldConfig) -> dict:
  t = things[int(rng.integers(len(things)))]
  (x0, y0), (x1, y1) = t.position(t.appear), t.position(t.vanish - 1)
  axis, delta = ("x", x1 - x0) if t.direction in ("left", "right") else ("y", y1 - y0)
  options, letter = _lettered(rng, list(DIRECTIONS), t.direction)
  reasoning = (
      f"Let me track the {t.name}. Frame {t.appear}: x={x0}, y={y0}. Frame {t.vanish - 1}: "
      f"x={x1}, y={y1}. {axis} changes by {delta:+d}, so it moves {t.direction}, option "
      f"{letter}. {conclude(letter)}")
  return _mc(f"In which direction does the {t.name} move?", options, letter, reasoning,
             "direction")


def ask_first_appearance(rng, things: list[Thing], cfg: WorldConfig) -> dict:
  ordered = sorted(things, key=lambda t: t.appear)
  steps = " ".join(f"{t.name}: frame {t.appear}." for t in ordered)
  candidates = ordered[:4]
  first = candidates[0]
  if len(candidates) > 1 and candidates[1].appear == first.appear:
    return ask_count(rng, things, cfg)           # a tie has no single answer
  options, letter = _lettered(rng, [t.name for t in candidates], first.name)
  reasoning = (f"Let me note when each shape appears. {steps} The earliest is the "
               f"{first.name}, option {letter}. {conclude(letter)}")
  return _mc("Which of these shapes appears first in the video?", options, letter, reasoning,
             "first_appearance")


def ask_count(rng, things: list[Thing], cfg: WorldConfig) -> dict:
  ordered = sorted(things, key=lambda t: (t.appear, t.name))
  steps = " ".join(f"{t.name}: {i}." for i, t in enumerate(ordered, 1))
  reasoning = f"Let me count the shapes as they appear. {steps} {conclude(len(things))}"
  return _value("numerical", "How many different shapes appear in the video?", len(things),
                reasoning, "count")


def ask_visible_frames(rng, things: list[Thing], cfg: WorldConfig) -> dict:
  t = things[int(rng.integers(len(things)))]
  reasoning = (f"Let me track the {t.name}. First frame {t.appear}, last frame {t.vanish - 1}. "
               f"{t.vanish - 1} - {t.appear} + 1 = {t.frames_visible}. "
               f"{conclude(t.frames_visible)}")
  return _value("regression", f"For how many frames is the {t.name} visible?",
                t.frames_visible, reasoning, "visible_frames")


def ask_image_count(rng, things: list[Thing], cfg: WorldConfig) -> dict:
  ordered = sorted(things, key=lambda t: t.x)
  steps = " ".join(f"{t.name}: {i}." for i, t in enumerate(ordered, 1))
  reasoning = f"Let me count from left to right. {steps} {conclude(len(things))}"
  return _value("numerical", "How many shapes are in the image?", len(things), reasoning,
                "image_count")


def ask_image_color(rng, things: list[Thing], cfg: WorldConfig) -> dict:
  t = things[int(rng.integers(len(things)))]
  others = [c for c, _ in cfg.colors if c != t.color]
  picks = [others[i] for i in rng.choice(len(others), size=min(3, len(others)), replace=False)]
  options, letter = _lettered(rng, [t.color] + picks, t.color)
  reasoning = (f"Let me find the {t.shape}. It is at x={t.x}, y={t.y} and it is {t.color}, "
               f"option {letter}. {conclude(letter)}")
  return _mc(f"What color is the {t.shape}?", options, letter, reasoning, "image_color")


QUESTIONS = {
    "direction": ask_direction, "first_appearance": ask_first_appearance, "count": ask_count,
    "visible_frames": ask_visible_frames, "image_count": ask_image_count,
    "image_color": ask_image_color,
}


def describe(things: list[Thing], cfg: WorldConfig) -> str:
  """The scene as text, for the text-only variant of a video question: one short line per shape,
  so a described scene costs about as many tokens as its rendered clip."""
  lines = [f"A video has {cfg.num_frames} frames, 0 to {cfg.num_frames - 1}; x grows rightwards "
           "and y downwards."]
  for t in things:
    lines.append(f"{t.name}: frames {t.appear} to {t.vanish - 1}, from x={t.x}, y={t.y}, "
                 f"{t.speed} px per frame {t.direction}.")
  return "\n".join(lines)


def make_example(cfg: WorldConfig, seed: int, split: str, index: int) -> tuple[dict, list[Thing]]:
  """One record (without media) and its scene. Image questions use a static scene."""
  rng = example_rng(seed, split, index)
  level = int(rng.integers(1, cfg.levels + 1))
  u = rng.random()
  data_type = ("image" if u < cfg.image_fraction else
               "text" if u < cfg.image_fraction + cfg.text_fraction else "video")
  things = make_scene(rng, cfg, level, static=data_type == "image")
  tasks = cfg.image_tasks if data_type == "image" else cfg.video_tasks
  question = QUESTIONS[tasks[int(rng.integers(len(tasks)))]](rng, things, cfg)
  if data_type == "text":
    question["problem"] = describe(things, cfg) + "\n" + question["problem"]
  record = dict(id=f"{split}-{index}", data_type=data_type, difficulty=level,
                media_path="", **question)
  return record, things
