"""Reading a response: its `<think>`/`<answer>` format, the answer's letter, number or words,
the options' letters, and the answer the reasoning states. One module, so the rewards, the
verifier's consistency rule and the evaluations read a response the same way.

Model text is an attack surface in RL: every function returns for ANY text (empty, garbage,
megabytes, broken or nested tags) in time linear in its length.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

LETTERS = "ABCDEFGHIJ"

# --- the response format -----------------------------------------------------------------------

_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_END_TAIL = re.compile(r"(?:\s|%s)*" % "|".join(re.escape(t[::-1]) for t in _END_TOKENS))
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_STRICT = re.compile(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)


@dataclass(frozen=True)
class ParsedResponse:
  think: str | None  # last complete <think> pair, stripped; None if there is none
  answer: str | None  # last complete <answer> pair, stripped; None if there is none
  well_formed: bool


def _as_text(response: Any) -> str:
  if isinstance(response, str):
    return response
  if isinstance(response, bytes):
    return response.decode("utf-8", errors="replace")
  return ""


def _strip_end_tokens(text: str) -> str:
  """Trailing whitespace and chat end tokens (generation artefacts, not part of the format)
  removed; matched on the reversed text, which keeps it linear in the text's length."""
  return text[:len(text) - _END_TAIL.match(text[::-1]).end()]


def last_inner(text: str, tag: str) -> str | None:
  """Content of the last complete innermost pair (`<a><a>B</a></a>` → "B"), or None.

  The last opening tag before the last closing tag, up to the first closing tag after it (any
  later closing tag follows another closing tag). Plain `str.find`s keep megabyte texts cheap.
  """
  opening, closing = f"<{tag}>", f"</{tag}>"
  start = text.rfind(opening, 0, max(text.rfind(closing), 0))
  if start < 0:
    return None
  start += len(opening)
  return text[start:text.find(closing, start)].strip()


def parse_response(text: str) -> ParsedResponse:
  """Well-formed: optional whitespace, one non-empty `<think>…</think>`, then one
  `<answer>…</answer>`, only whitespace between and after; each of the four tags exactly once."""
  text = _as_text(text)
  body = _strip_end_tokens(text)
  # Counting first keeps the regex linear: with each tag once it cannot backtrack over many.
  match = _STRICT.fullmatch(body) if all(body.count(t) == 1 for t in _TAGS) else None
  well_formed = match is not None and bool(match.group(1).strip())
  return ParsedResponse(last_inner(text, "think"), last_inner(text, "answer"), well_formed)


_LATEX_WRAP = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf|fbox)\s*\{([^{}]*)\}")


def unwrap_answer(text: str) -> str:
  """Drop `$` and `\\boxed{}`-style wrappers (up to 3 nested: deeper nesting is not an answer)."""
  for _ in range(3):
    text = _LATEX_WRAP.sub(r"\1", text)
  return text.replace("$", "").strip()


# --- words, numbers, options -------------------------------------------------------------------

def words(text: str) -> list[str]:
  """Case-folded `\\w+` runs: what the repetition and consistency checks compare."""
  return re.findall(r"\w+", text.casefold())


def fold_words(text: str) -> str:
  """The words alone, case-folded: `Red cube.` and `red  cube` are equal."""
  return " ".join(words(text))


def normalize_space(text: str) -> str:
  """Whitespace runs made one space, case-folded; punctuation kept (exact-match scoring)."""
  return " ".join(text.split()).casefold()


NUMBER_RE = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
THOUSANDS_RE = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")


def numbers(text: str) -> list[Decimal]:
  """Every ASCII number in the text (`1,234` is one), in order; exponents past Decimal's range
  are skipped."""
  out = []
  for s in NUMBER_RE.findall(THOUSANDS_RE.sub("", text)):
    try:
      out.append(Decimal(s))
    except InvalidOperation:
      pass
  return out


def single_number(text: str) -> Decimal | None:
  """The number when the unwrapped text holds exactly one (`$1,234.5$`, `x = 5`, `3.5 meters`),
  else None. Decimal keeps `1e999999` and 1000-digit integers exact."""
  found = NUMBER_RE.findall(THOUSANDS_RE.sub("", unwrap_answer(text)))
  if len(found) != 1:
    return None
  try:
    return Decimal(found[0])
  except InvalidOperation:
    return None


_OPTION = re.compile(r"\s*\(?([A-Ja-j])\s*[.):]\s*(.*)", re.S)
_LETTER_ONLY = re.compile(r"[A-Ja-j]")


def option_letters(options: Sequence[str] | None) -> dict[str, str]:
  """Folded option text -> its capital letter, for `A. red cube` (both `a red cube` and `red
  cube`) or, when the options are not lettered, by position."""
  out = {}
  for i, option in enumerate((options or ())[:len(LETTERS)]):
    match = _OPTION.fullmatch(option)
    letter, body = (match.group(1), match.group(2)) if match else (LETTERS[i], option)
    out.setdefault(fold_words(option), letter.upper())
    out[fold_words(body)] = letter.upper()
  return out


def gold_letter(gold: str, options: Sequence[str] | None) -> str | None:
  """The gold option letter (capital) from `B`, `(B)`, `B. text`, or an option's text."""
  if not gold:
    return None
  if _LETTER_ONLY.fullmatch(gold):
    return gold.upper()
  match = _OPTION.fullmatch(gold)
  if match:
    return match.group(1).upper()
  return option_letters(options).get(fold_words(gold))


# --- the answer a reasoning states (the consistency rule) --------------------------------------

_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_ANSWER_CUE = re.compile(r"\b(?:answer|option|choice)\s+(?:is|(?:would|should|must|will)\s+be)"
                         r"\s*:?\s*|\banswer\s*[:=]\s*", re.I)
_OPTION_CORRECT = re.compile(r"\b(?:option|choice)\s+\(?([A-J])\)?\s+(?:is|seems|looks)\s+"
                             r"(?:correct|right)\b", re.I)
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_CONCLUSION = re.compile(r"\b(?:so|therefore|thus|hence|overall|in\s+conclusion|"
                         r"in\s+summary)\b", re.I)
_LEAD_LETTER = re.compile(r"(?:(?i:option|choice)\s+)?[(\[*\"']*([A-J])(?![A-Za-z0-9])")
# A standalone capital A–J; "I" only when it is not the pronoun ("I think", "I'm").
_LETTER = re.compile(r"(?<![A-Za-z0-9'])([A-HJ]|I(?!['’]|\s+[a-z]))(?![A-Za-z0-9'])")
_LETTER_ANSWER = re.compile(r"(?:option\s+)?\(?([A-J])\)?(?:[.):]\s*.*)?", re.I | re.S)
_MAX_CUES = 8


def _answer_value(answer: str, options: Sequence[str] | None) -> tuple[str, Any] | None:
  """(kind, value) of an answer tag: ("letter", "B") for `B`, `(B)`, `$B$`, `B. text`;
  ("number", Decimal) when it holds exactly one number; else ("text", folded words)."""
  text = unwrap_answer(answer or "")
  match = _LETTER_ANSWER.fullmatch(text)
  if match:
    return "letter", match.group(1).upper()
  folded, letters = fold_words(text), option_letters(options)
  if not folded:
    return None
  if folded in letters:
    return "letter", letters[folded]
  found = numbers(text)
  return ("number", found[0]) if len(found) == 1 else ("text", folded)


def _explicit_value(phrase: str, kind: str, options: Sequence[str] | None):
  """The value right after an explicit cue: a leading letter (capital, or the phrase is one
  letter) or an option's text; the first number; or the folded phrase."""
  text = unwrap_answer(phrase)
  if kind == "letter":
    match = _LEAD_LETTER.match(text) or re.fullmatch(r"\W*([a-jA-J])\W*", text)
    if match:
      return match.group(1).upper()
    return option_letters(options).get(fold_words(text))
  if kind == "number":
    found = numbers(text)
    return found[0] if found else None
  return fold_words(text) or None


def _clause_value(clause: str, kind: str):
  """The last standalone capital letter or the last number of a conclusion clause."""
  if kind == "letter":
    letters = _LETTER.findall(clause)
    return letters[-1] if letters else None
  if kind == "number":
    found = numbers(clause)
    return found[-1] if found else None
  return None


def _final_token_value(sentence: str, kind: str):
  """A final token that is only a capital letter or only a number (brackets, `$`, `*` and
  closing punctuation aside)."""
  token = THOUSANDS_RE.sub("", sentence.split()[-1]).strip("()[]*$.!:,")
  if kind == "letter":
    return token if re.fullmatch(r"[A-J]", token) else None
  if kind == "number" and NUMBER_RE.fullmatch(token):
    found = numbers(token)
    return found[0] if found else None
  return None


def _sentence_value(sentence: str, kind: str, options: Sequence[str] | None, final: bool):
  # (cue start, phrase span); a cue's phrase runs to the sentence end. Only the last few cues
  # are read: a looping "the answer is the answer is …" would otherwise cost quadratic time.
  cues = [(m.start(), m.end(), len(sentence)) for m in _ANSWER_CUE.finditer(sentence)]
  cues += [(m.start(), *m.span(1)) for m in _OPTION_CORRECT.finditer(sentence)]
  cues += [(m.start(), *m.span(1)) for m in _BOXED.finditer(sentence)]
  for _, start, end in sorted(cues, reverse=True)[:_MAX_CUES]:
    value = _explicit_value(sentence[start:end], kind, options)
    if value is not None:
      return value
  conclusion = _CONCLUSION.search(sentence)
  value = _clause_value(sentence[conclusion.end():], kind) if conclusion else None
  if value is None and final:
    value = _final_token_value(sentence, kind)
  return value


def stated_answer(reasoning: str, kind: str, options: Sequence[str] | None = None):
  """The last answer the reasoning states, read as `kind` ("letter" → "B", "number" → Decimal,
  "text" → folded words), or None.

  Sentences (split after `.!?` + space, and at newlines) are read from the last back; the first
  that states an answer decides. Within a sentence: an explicit cue ("the answer is X", "answer:
  X", "option X is correct", `\\boxed{X}`; the last cue that yields a value), else a conclusion
  clause ("so/therefore/thus/hence/overall … X": its last capital letter or number), else, in
  the final sentence only, a bare final letter or number. Letters and numbers are only read for
  letter and number answers; a text answer needs an explicit cue.
  """
  sentences = [s for s in _SENTENCES.split(reasoning or "") if s.strip()]
  for i in range(len(sentences) - 1, -1, -1):
    value = _sentence_value(sentences[i], kind, options, final=i == len(sentences) - 1)
    if value is not None:
      return value
  return None


def rule_consistent(reasoning: str, answer: str,
                    options: Sequence[str] | None = None) -> bool | None:
  """Whether the reasoning's last stated answer equals the answer tag (letters; numbers within
  1e-6 relative; folded words), the kind read from the tag; None when either is missing."""
  target = _answer_value(answer, options)
  if target is None:
    return None
  kind, gold = target
  stated = stated_answer(reasoning, kind, options)
  if stated is None:
    return None
  if kind == "number":
    return math.isclose(float(stated), float(gold), rel_tol=1e-6)
  return stated == gold
