"""Video data path: decoding, Qwen2.5-VL preprocessing, prompts, TFDS datasets, Grain loader.

The synthetic verifiable video-QA world lives in `veripo_jax.data.synthetic`.
"""

from veripo_jax.data.batching import BatchSpec, Collator
from veripo_jax.data.datasets import (MissingMediaError, VeripoEvalBuilder, VideoR1Builder,
                                      data_source, skipped_at_build)
from veripo_jax.data.errors import BadExampleError, DataFormatError
from veripo_jax.data.loader import Loader, LoaderConfig, make_dataset, to_global
from veripo_jax.data.prompts import PromptTemplates, get_templates
from veripo_jax.data.records import read_veripo_eval, read_video_r1
from veripo_jax.data.tokenization import PromptEncoder, SpecialIds, load_tokenizer
from veripo_jax.data.vision import (VisionSettings, VisualInput, process_image, process_video)
