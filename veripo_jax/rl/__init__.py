"""Reinforcement learning stages of VerIPO."""

from veripo_jax.rl.rewards import (REWARDS, ParsedResponse, accuracy_reward, format_reward,
                                   get_reward, mean_relative_accuracy, normalize_problem_type,
                                   parse_response, register_reward, rouge_scores, score_rollouts,
                                   total_reward, word_error_rate)
