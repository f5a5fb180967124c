"""The prompt batch, named once: every field from the loader (`batching.Collator`) through
generation and the update (`rl.rollout`, `rl.sequences`) to the rewards and the verifier.

A batch is a dict of host numpy arrays with these keys:
  TOKEN_FIELDS    (B, L) left-padded prompt (+ response) tokens; position_ids is (3, B, L)
                  M-RoPE positions and next_position (B,) the first generated token's
  MEDIA_FIELDS    patch rows of the batch's videos and images (row order), their grids and
                  seconds per temporal patch: what the model's `prepare` reads besides tokens
  ROW_FIELDS      arrays whose leading axis is the batch row (sharded over the data axes)
  EXAMPLE_FIELDS  the example behind each row (text fields, the options, the source index)
A stored rollout record carries REWARD_FIELDS of its example, so rewards, the verifier and the
evaluations read the same example whether it comes from a batch or a file.
"""

TOKEN_FIELDS = ("input_ids", "attention_mask", "position_ids", "next_position")
MEDIA_FIELDS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                "second_per_grid_ts")
MODEL_FIELDS = TOKEN_FIELDS + MEDIA_FIELDS
# (B, ...) arrays besides the examples; response_mask marks gold response tokens (SFT).
ROW_FIELDS = ("input_ids", "attention_mask", "response_mask", "next_position", "example_mask")
PATCH_FIELDS = ("pixel_values_videos", "pixel_values")      # leading axis: patch rows
TEXT_FIELDS = ("id", "answer", "problem_type", "data_type", "task")
# `source_index` is the example's position in its split (finds it again, e.g. for DPO pairs).
EXAMPLE_FIELDS = TEXT_FIELDS + ("options", "source_index")
REWARD_FIELDS = ("answer", "problem_type", "options", "task", "data_type")
DATASET_FIELDS = ("dataset_dir", "split")                   # where a rollout's prompt came from
