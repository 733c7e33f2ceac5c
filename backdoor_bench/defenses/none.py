"""No defense: standard training on the poisoned set (the shared, cached backdoored model)."""

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome


class NoDefense(Defense):
    def __init__(self, name: str = "none", **kw):
        super().__init__(name=name, **kw)

    def run(self, ctx: DefenseContext) -> Outcome:
        return Outcome(model=ctx.backdoored_model())
