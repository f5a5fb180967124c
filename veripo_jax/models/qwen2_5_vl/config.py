"""Qwen2.5-VL configuration: presets for the released sizes and a reader for HF `config.json`.

The HF config classes carry defaults that are not the released values (vision hidden 3584,
tokens_per_second 4), so everything here is read from the file or from the presets below,
which copy the released checkpoints. A plain Qwen2 / Qwen2.5 language model (the verifier's
judge) is the same config without a vision tower (`vision=None`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  out_hidden_size: int = 3584
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: float = 2
  in_channels: int = 3
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def window_patches(self) -> int:
    """Patches in one attention window (8x8 = 64 for the released models)."""
    return (self.window_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  head_dim: int = 128
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  max_position_embeddings: int = 128000


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
  """`vision=None` is a text-only Qwen2 model: plain 1-D RoPE, which is M-RoPE with three equal
  position rows, so it shares the decoder (its image/video token ids are unused)."""
  text: TextConfig = TextConfig()
  vision: VisionConfig | None = VisionConfig()
  tie_word_embeddings: bool = False
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  vision_token_id: int = 151654
  bos_token_id: int = 151643
  eos_token_id: int = 151645
  pad_token_id: int = 151643

  def __post_init__(self):
    t, v = self.text, self.vision
    if 2 * sum(t.mrope_section) != t.head_dim:
      raise ValueError(f"mrope_section {t.mrope_section} must sum to head_dim/2 = "
                       f"{t.head_dim // 2}")
    if t.num_attention_heads % t.num_key_value_heads:
      raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if v is not None and v.out_hidden_size != t.hidden_size:
      raise ValueError(f"vision out_hidden_size {v.out_hidden_size} != text hidden_size "
                       f"{t.hidden_size}")

  def replace(self, **kw) -> "Qwen25VLConfig":
    return dataclasses.replace(self, **kw)

  @property
  def vocab_size(self) -> int:
    return self.text.vocab_size

  @property
  def media_token_ids(self) -> tuple[int, ...]:
    """Placeholder tokens that stand for image / video features (none without a tower)."""
    return () if self.vision is None else (self.image_token_id, self.video_token_id)

  # ----------------------------------------------------------------------------------------------
  # Hugging Face config.json <-> this config.

  def to_hf_dict(self) -> dict[str, Any]:
    """A config.json transformers (4.x and 5.x) reads back into the same model: a
    Qwen2ForCausalLM without a vision tower, else a Qwen2_5_VLForConditionalGeneration."""
    t = self.text
    text = dict(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
        head_dim=t.head_dim, rms_norm_eps=t.rms_norm_eps, rope_theta=t.rope_theta,
        max_position_embeddings=t.max_position_embeddings, hidden_act="silu",
        tie_word_embeddings=self.tie_word_embeddings, use_sliding_window=False,
        sliding_window=32768, max_window_layers=t.num_hidden_layers, attention_dropout=0.0,
        bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id)
    common = dict(pad_token_id=self.pad_token_id, torch_dtype="bfloat16")
    if self.vision is None:
      return dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", **text,
                  rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta}, **common)
    v = self.vision
    rope = {"type": "mrope", "rope_type": "default", "mrope_section": list(t.mrope_section)}
    text.update(rope_scaling=rope, rope_parameters={**rope, "rope_theta": t.rope_theta})
    vision = dict(
        model_type="qwen2_5_vl", depth=v.depth, hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size, num_heads=v.num_heads,
        out_hidden_size=v.out_hidden_size, patch_size=v.patch_size,
        spatial_patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
        spatial_merge_size=v.spatial_merge_size, window_size=v.window_size,
        fullatt_block_indexes=list(v.fullatt_block_indexes), tokens_per_second=v.tokens_per_second,
        in_chans=v.in_channels, in_channels=v.in_channels, hidden_act="silu")
    # The 4.x form keeps the text fields at the top level; 5.x reads `text_config`. Write both.
    return dict(
        architectures=["Qwen2_5_VLForConditionalGeneration"], model_type="qwen2_5_vl",
        **text, text_config=dict(model_type="qwen2_5_vl_text", **text), vision_config=vision,
        image_token_id=self.image_token_id, video_token_id=self.video_token_id,
        vision_start_token_id=self.vision_start_token_id,
        vision_end_token_id=self.vision_end_token_id, vision_token_id=self.vision_token_id,
        **common)


# Defaults of transformers' config classes, for fields a config.json may leave out.
_TEXT_DEFAULTS = {"qwen2_5_vl": dict(rope_theta=1e6, max_position_embeddings=128000),
                  "qwen2": dict(rope_theta=1e4, max_position_embeddings=32768)}
_MODEL_TYPES = tuple(_TEXT_DEFAULTS)
_TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id",
                 "vision_end_token_id", "vision_token_id", "bos_token_id", "eos_token_id")


def from_hf_config(path_or_dict: str | os.PathLike | dict) -> Qwen25VLConfig:
  """Reads a transformers 4.x or 5.x `config.json` (path to file/dir, or a dict): Qwen2.5-VL, or
  a text-only Qwen2 / Qwen2.5 language model (`vision=None`)."""
  raw, source = _read_json(path_or_dict)
  model_type = raw.get("model_type")
  if model_type not in _MODEL_TYPES:
    raise ValueError(f"{source}: unsupported model_type {model_type!r}; "
                     f"expected one of {_MODEL_TYPES}")
  # 5.x nests the VL text fields in text_config; 4.x and Qwen2 keep them at top level.
  text_raw = {**{k: v for k, v in raw.items() if k not in ("text_config", "vision_config")},
              **raw.get("text_config", {})}
  multimodal = model_type == "qwen2_5_vl"
  text = _text_config(_Fields(text_raw, source, "text_config." if multimodal else ""),
                      multimodal, _TEXT_DEFAULTS[model_type])
  vision = None
  if multimodal:
    vision_raw = _Fields(raw, source).need("vision_config")
    vision = _vision_config(_Fields(vision_raw, source, "vision_config."), text.hidden_size)
  defaults = Qwen25VLConfig()

  def token(key: str, fallback: int) -> int:
    value = raw.get(key, text_raw.get(key))
    value = value[0] if isinstance(value, list) else value
    return fallback if value is None else value

  ids = {k: token(k, getattr(defaults, k)) for k in _TOKEN_FIELDS}
  ids["pad_token_id"] = token("pad_token_id", ids["bos_token_id"])
  tie = raw.get("tie_word_embeddings", text_raw.get("tie_word_embeddings", False))
  return Qwen25VLConfig(text=text, vision=vision, tie_word_embeddings=bool(tie), **ids)


def _read_json(path_or_dict: str | os.PathLike | dict) -> tuple[dict, str]:
  """The config dict and the name errors use for it."""
  if isinstance(path_or_dict, dict):
    return path_or_dict, "<dict>"
  source = os.fspath(path_or_dict)
  if os.path.isdir(source):
    source = os.path.join(source, "config.json")
  if not os.path.exists(source):
    raise FileNotFoundError(f"{source}: no config.json found")
  try:
    with open(source) as f:
      return json.load(f), source
  except json.JSONDecodeError as e:
    raise ValueError(f"{source}: invalid JSON at line {e.lineno}: {e.msg}") from e


@dataclasses.dataclass(frozen=True)
class _Fields:
  """One section of a config.json, so that errors name the file and the field."""
  values: dict
  source: str
  where: str = ""

  def need(self, key: str):
    if self.values.get(key) is None:
      raise self.missing(key)
    return self.values[key]

  def missing(self, key: str, hint: str = "") -> ValueError:
    return ValueError(f"{self.source}: missing field '{self.where}{key}'{hint}")

  def get(self, key: str, default=None):
    return self.values.get(key, default)

  def error(self, key: str, problem: str) -> ValueError:
    return ValueError(f"{self.source}: field '{self.where}{key}' {problem}")


def _text_config(f: _Fields, multimodal: bool, defaults: dict) -> TextConfig:
  rope = f.get("rope_parameters") or f.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "mrope"):
    raise f.error("rope_scaling", f"has type {rope_type!r}; only default RoPE is implemented")
  if f.get("use_sliding_window"):
    raise f.error("use_sliding_window", "is true; sliding-window attention is not implemented")
  if multimodal and "mrope_section" not in rope:
    raise f.missing("rope_scaling.mrope_section", " (or rope_parameters.mrope_section)")
  heads, hidden = f.need("num_attention_heads"), f.need("hidden_size")
  head_dim = f.get("head_dim") or hidden // heads
  # Text-only: every frequency follows the first of three equal position rows, i.e. plain RoPE.
  section = tuple(rope["mrope_section"]) if multimodal else (head_dim // 2, 0, 0)
  return TextConfig(
      vocab_size=f.need("vocab_size"), hidden_size=hidden,
      intermediate_size=f.need("intermediate_size"),
      num_hidden_layers=f.need("num_hidden_layers"), num_attention_heads=heads,
      num_key_value_heads=f.get("num_key_value_heads", heads), head_dim=head_dim,
      rms_norm_eps=f.get("rms_norm_eps", 1e-6),
      rope_theta=float(rope.get("rope_theta", f.get("rope_theta", defaults["rope_theta"]))),
      mrope_section=section,
      max_position_embeddings=f.get("max_position_embeddings",
                                    defaults["max_position_embeddings"]))


def _vision_config(f: _Fields, text_hidden: int) -> VisionConfig:
  return VisionConfig(
      depth=f.need("depth"), hidden_size=f.need("hidden_size"),
      intermediate_size=f.need("intermediate_size"), num_heads=f.need("num_heads"),
      out_hidden_size=f.get("out_hidden_size", text_hidden),
      patch_size=f.get("patch_size", 14),
      temporal_patch_size=f.get("temporal_patch_size", 2),
      spatial_merge_size=f.get("spatial_merge_size", 2),
      window_size=f.get("window_size", 112),
      fullatt_block_indexes=tuple(f.get("fullatt_block_indexes", (7, 15, 23, 31))),
      tokens_per_second=f.get("tokens_per_second", 2),
      in_channels=f.get("in_channels", f.get("in_chans", 3)),
      rms_norm_eps=f.get("rms_norm_eps", 1e-6),
      rope_theta=float((f.get("rope_parameters") or {}).get("rope_theta", 10000.0)))


def _preset(hidden, inter, layers, heads, kv, vocab, tied) -> Qwen25VLConfig:
  return Qwen25VLConfig(
      text=TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, head_dim=128),
      vision=VisionConfig(out_hidden_size=hidden), tie_word_embeddings=tied)


PRESETS: dict[str, Qwen25VLConfig] = {
    # Tiny random model for tests (the porting spec's verification config).
    "tiny": Qwen25VLConfig(
        text=TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, mrope_section=(2, 3, 3), max_position_embeddings=4096),
        vision=VisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                            out_hidden_size=64, fullatt_block_indexes=(1,)),
        image_token_id=252, video_token_id=253, vision_start_token_id=250,
        vision_end_token_id=251, vision_token_id=249, bos_token_id=0, eos_token_id=1,
        pad_token_id=0),
    "3b": _preset(2048, 11008, 36, 16, 2, 151936, True),
    "7b": _preset(3584, 18944, 28, 28, 4, 152064, False),
    "32b": _preset(5120, 27648, 64, 40, 8, 152064, False),
    "72b": _preset(8192, 29568, 80, 64, 8, 152064, False),
}


def get_preset(name: str) -> Qwen25VLConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name]


def fit_to_tokenizer(config: Qwen25VLConfig, tokenizer, vocab_multiple: int = 64
                     ) -> Qwen25VLConfig:
  """The config for a fresh model over `tokenizer`: its vocabulary (rounded up to
  `vocab_multiple` rows, so the embedding shards evenly) and Qwen's special tokens as this
  tokenizer numbers them."""
  ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (
      "<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
      "<|image_pad|>", "<|video_pad|>")}
  vocab = -(-len(tokenizer) // vocab_multiple) * vocab_multiple
  return config.replace(
      text=dataclasses.replace(config.text, vocab_size=vocab),
      image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
      vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
      vision_token_id=ids["<|vision_pad|>"], bos_token_id=ids["<|endoftext|>"],
      eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
