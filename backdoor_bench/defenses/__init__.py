"""Defenses (DESIGN.md section 2, Defenses): one file per defense, one config per file in conf/defense/."""

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict

__all__ = ["Defense", "DefenseContext", "Outcome", "Verdict"]
