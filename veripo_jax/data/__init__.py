"""Video data path: decoding, Qwen2.5-VL preprocessing, prompts, TFDS datasets, Grain loader,
and where a run's data comes from (`sources`).

The synthetic verifiable video-QA world lives in `veripo_jax.data.synthetic`. Import the
modules themselves: the package imports nothing, so a light reader (the report) stays light.
"""
