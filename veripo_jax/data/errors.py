"""Two kinds of bad input: a malformed file is an error; a bad example in a dataset is skipped.

A user's annotation file with a broken line should stop the run with the file and line named, while
one corrupt video among a million must not: the loader drops it and counts it by `reason`.
"""


class DataFormatError(ValueError):
  """A question/annotation file is malformed; the message names the file, line or field."""


class BadExampleError(ValueError):
  """One example cannot be used (corrupt media, too few frames, ...); skipped and counted.

  `reason` is a short stable key (e.g. "decode_error") used as the name of the skip counter.
  """

  def __init__(self, reason: str, message: str):
    super().__init__(f"{reason}: {message}")
    self.reason = reason
