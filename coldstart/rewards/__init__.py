"""Reward functions (TRL's signature `f(prompts, completions, **columns) -> list[float]`), their
registry and their weighted combination. See accuracy.py, basic.py and combine.py for the specs."""

from coldstart.rewards.accuracy import GoldAnswerError, answers_match, make_accuracy, verify_answer
from coldstart.rewards.basic import import_reward, make_exact, make_format, make_overlong, make_task
from coldstart.rewards.code import extract_program, make_code
from coldstart.rewards.combine import REWARDS, CombinedReward, RewardPart, RewardResult, build_reward
from coldstart.rewards.extract import extract_answer, last_boxed

__all__ = [
    "REWARDS",
    "CombinedReward",
    "GoldAnswerError",
    "RewardPart",
    "RewardResult",
    "answers_match",
    "build_reward",
    "extract_answer",
    "extract_program",
    "import_reward",
    "last_boxed",
    "make_accuracy",
    "make_code",
    "make_exact",
    "make_format",
    "make_overlong",
    "make_task",
    "verify_answer",
]
