"""ISPL + boosting (the ISPL paper, "Defending Against Backdoor Attacks Using Ensembles of Weak
Learners", Sec. 5 and App. B.1, as the authors' code computes it): the schedule arithmetic,
trimming and the vote."""

import pytest
import torch

from backdoor_bench.defenses.ispl import ISPL, ispl_schedule, trim, vote
from backdoor_bench.errors import ConfigError


def test_schedule_matches_the_authors_code_worked_values():
    dp, betas = ispl_schedule(50000, 50000, 0.12)  # the first component: N = 5, 3dp, 2dp, dp, dp, dp
    assert dp == pytest.approx(0.12)
    assert betas == pytest.approx([0.36, 0.24, 0.12, 0.12, 0.12])
    dp, betas = ispl_schedule(12000, 50000, 0.12)  # dp = 0.5: N = 2 + 2 = 4
    assert dp == pytest.approx(0.5)
    assert betas == pytest.approx([1.0, 0.5, 0.5, 0.5])
    dp, betas = ispl_schedule(20000, 50000, 0.12)  # dp = 0.3: floor(1/dp) = 3, N = 5, 3dp clipped at 1
    assert betas == pytest.approx([0.9, 0.6, 0.3, 0.3, 0.3])
    dp, betas = ispl_schedule(6000, 50000, 0.12)  # the pool is one component
    assert dp == 1.0 and betas == [1.0, 1.0, 1.0]


def test_trim_unions_the_global_quantile_with_a_per_class_floor():
    # class 0 holds the 8 lowest losses, class 1 the 8 highest
    m = torch.arange(16, dtype=torch.float)
    y = torch.tensor([0] * 8 + [1] * 8)
    keep = trim(m, y, beta=0.25, floor=0.5)  # global: m <= 3.75; class floor: 0.125-quantile
    assert keep.nonzero().flatten().tolist() == [0, 1, 2, 3, 8]
    assert trim(m, y, beta=0.25, floor=1e-9).sum() == 4 + 1  # the class minimum always stays


def test_vote_takes_the_mode_and_breaks_ties_at_random():
    preds = torch.tensor([[0, 1, 2, 1], [0, 1, 3, 2], [1, 2, 3, 3]])
    mode, count = vote(preds, 4, torch.Generator().manual_seed(0))
    assert mode[:3].tolist() == [0, 1, 3] and count[:3].tolist() == [2, 2, 2]
    assert count[3] == 1 and mode[3] in (1, 2, 3)
    seen = {int(vote(preds, 4, torch.Generator().manual_seed(s))[0][3]) for s in range(30)}
    assert seen == {1, 2, 3}


def test_bad_arguments_say_what_to_change():
    with pytest.raises(ConfigError, match="expansion"):
        ISPL(expansion=0)
    with pytest.raises(ConfigError, match="components"):
        ISPL(components=0)
