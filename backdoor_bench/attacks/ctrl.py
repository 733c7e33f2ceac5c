"""CTRL (Li, Jia, Wang, Li, Wang, Wang, "An Embarrassingly Simple Backdoor Attack on Self-supervised
Learning", ICCV 2023): a frequency trigger, FTrojan's construction (YUV, block DCT, a fixed
magnitude at high frequencies of the chrominance channels), stamped on target-class images whose
labels never change: the attacker of a self-supervised learner only contributes images, so the
trigger ties to the target class's features. `poison_rate` is a share of the target class (0.1:
1% of a 10-class set, the paper's 1% poisoning); magnitude 100 on window 32 at (15, 15) and (31,
31) in channels 1 and 2 is our reading of the authors' CIFAR-10 setting. In this project it is
evaluated like the other clean-label attacks (supervised training, ASR on triggered non-target
test images); the paper evaluates SSL encoders with a linear or kNN probe.
"""

from __future__ import annotations

from backdoor_bench.attacks.ftrojan import FTrojan


class CTRL(FTrojan):
    """FTrojan's trigger as a clean-label attack on the target class (args as `FTrojan`'s)."""

    clean_label = True
    rate_of = "eligible"

    def __init__(self, magnitude: float = 100, **kw):
        super().__init__(magnitude=magnitude, **kw)
