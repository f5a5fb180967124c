"""Reinforcement learning stages of VerIPO."""

from veripo_jax.rl.answers import ParsedResponse, parse_response, rule_consistent, stated_answer
from veripo_jax.rl.rewards import (REWARDS, accuracy_reward, format_reward, get_reward,
                                   mean_relative_accuracy, normalize_problem_type,
                                   register_reward, rouge_scores, score_rollouts, total_reward,
                                   word_error_rate)
