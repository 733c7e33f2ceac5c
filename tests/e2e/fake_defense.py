"""A test-only cleansing defense: flags images whose bottom-right 3x3 corner is white (a perfect
BadNets detector built from the trigger, not from the ground truth) and retrains without them."""

from backdoor_bench.defenses.base import Defense, Outcome, Verdict


class CornerCleanser(Defense):
    def __init__(self, name="corner", **kw):
        super().__init__(name=name, **kw)

    def run(self, ctx):
        flagged = (ctx.train.x[..., -3:, -3:] == 255).flatten(1).all(1)
        verdict = Verdict(kept=~flagged, scores=flagged.float())
        return Outcome(model=ctx.retrain(verdict), verdict=verdict, extra={"n_flagged": int(flagged.sum())})
