"""Text environments for multi-turn RL (coldstart.multiturn): the protocol and the built-ins."""

from coldstart.envs.base import Env, EnvFactory, build_env

__all__ = ["Env", "EnvFactory", "build_env"]
