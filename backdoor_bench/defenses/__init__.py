"""Defenses: one file per defense, one config per file in conf/defense/ (see docs/architecture.md)."""

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict

__all__ = ["Defense", "DefenseContext", "Outcome", "Verdict"]
