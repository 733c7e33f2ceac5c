"""Attacks: one file per attack, one config per file in conf/attack/."""

from backdoor_bench.attacks.base import Attack, PoisonedSet

__all__ = ["Attack", "PoisonedSet"]
