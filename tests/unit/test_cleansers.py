"""The self-supervised-feature cleansers: kNN label consistency (a reconstruction of the kNN
SSL-embedding cleansing paper, Wang et al., ICASSP'23) and per-class flows (the flows paper,
Sabolic, Grubisic, Segvic), on hand-made features."""

import math

import pytest
import torch

from backdoor_bench.defenses.flow_relabel import (
    FlowRelabel,
    d_scores,
    foreign_argmax,
    foreign_nll,
    foreign_share,
    histogram_valley,
    label_consistency,
    mean_log_std,
)
from backdoor_bench.defenses.ssl_knn import (
    dominant_class,
    knn_consistency,
    knn_indices,
    net_outflow,
    outlier_classes,
)
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.flows import log_density_matrix, make_flow


def test_knn_neighbours_and_consistency_exact():
    h = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    nn = knn_indices(h, 2)
    assert nn.tolist()[0] == [1, 2] and set(nn.tolist()[3]) == {4, 2}  # self excluded, cosine order
    y = torch.tensor([0, 0, 1, 1, 1])
    s, majority, share = knn_consistency(nn, y, 2)
    assert s.tolist() == [0.5, 0.5, 0.0, 1.0, 1.0]  # sample 2 (label 1) sits among the 0s
    assert majority[2] == 0 and share[2] == 1.0
    assert majority[3] == 1 and share[3] == 1.0


def test_knn_flags_a_planted_label_flip():
    torch.manual_seed(0)
    centres = torch.eye(3) * 5
    h = torch.cat([centres[c] + torch.randn(30, 3) * 0.3 for c in range(3)])
    y = torch.arange(3).repeat_interleave(30)
    y_given = y.clone()
    y_given[:5] = 2  # five class-0 samples labeled as the target 2
    s, majority, share = knn_consistency(knn_indices(h, 10), y_given, 3)
    flagged = s < 0.5
    assert flagged[:5].all() and not flagged[5:].any()
    assert (majority[:5] == 0).all()  # relabeled back to their true class


def test_flow_log_density_is_the_gaussian_when_the_couplings_are_identity():
    flow = make_flow(4, hidden=8, transforms=2)
    for coupling in flow.transform.transforms:  # zero shift and log-scale: every coupling is the identity
        for p in coupling.hyper[-1].parameters():
            torch.nn.init.zeros_(p)
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.5, 3.0]])
    expected = -0.5 * (z**2).sum(1) - 2 * math.log(2 * math.pi)
    assert torch.allclose(log_density_matrix([flow], z).squeeze(1), expected, atol=1e-5)


def test_histogram_valley_and_sd_on_a_bimodal_class():
    v = torch.cat([torch.full((10,), -100.0), torch.linspace(-10, 0, 90)])
    mu = histogram_valley(v, lam=0.75, bins=30)
    assert -100 < mu < -10
    L = torch.stack([torch.zeros(100), v], 1)  # class 0's samples; class 1's flow gives v
    s_d, mus = d_scores(L, torch.zeros(100, dtype=torch.long), lam=0.75, bins=30)
    assert s_d[0].item() == pytest.approx(0.10)


def test_label_consistency_exact():
    L = torch.tensor([[0.0, -5.0], [-5.0, 0.0], [-5.0, 0.0], [-5.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])  # sample 1 looks like class 1 but is labeled 0
    assert label_consistency(L, y).tolist() == [0.5, 1.0]
    # no class-frequency prior: three class-0 samples against one class-1 sample do not tip a tie
    L = torch.tensor([[0.0, 0.1], [0.0, -1.0], [0.0, -1.0], [-1.0, 0.0]])
    assert label_consistency(L, torch.tensor([0, 0, 0, 1])).tolist() == pytest.approx([2 / 3, 1.0])


def test_foreign_nll_is_eq3_per_dimension_exact():
    """S_ND(c) = mean over the samples NOT labeled c of -log p_c, over the dimension, plus the mean
    log std of the features (the NLL of z / sigma)."""
    L = torch.tensor([[-1.0, -3.0], [-2.0, -7.0], [-4.0, -0.5]])
    y = torch.tensor([0, 0, 1])
    # class 0's flow on sample 2: 4 nats; class 1's on samples 0 and 1: (3 + 7) / 2 = 5 nats; d = 2
    assert foreign_nll(L, y, 2).tolist() == pytest.approx([2.0, 2.5])
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])  # stds 2 / sqrt(3) and 4 / sqrt(3)
    assert mean_log_std(z) == pytest.approx(0.5 * math.log(8 / 3))
    assert foreign_nll(L, y, 2, mean_log_std(z)).tolist() == pytest.approx(
        [2.0 + 0.5 * math.log(8 / 3), 2.5 + 0.5 * math.log(8 / 3)]
    )
    assert mean_log_std(10 * z) == pytest.approx(mean_log_std(z) + math.log(10))  # scale: shifts log(10)/dim


def test_nd_readings_are_all_logged_and_own_samples_do_not_enter_eq3():
    """Class 0's own samples (rows 0-1) enter only the consistency reading; Eq. 3 reads rows 2-3."""
    L = torch.tensor([[9.0, -1.0], [9.0, -1.0], [-3.0, 0.0], [-5.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    z = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])  # one dimension, std 2 / sqrt(3)
    r = FlowRelabel().nd_scores(L, y, z)
    assert r["foreign_nll_raw"].tolist() == pytest.approx([4.0, 1.0])
    assert r["foreign_nll"].tolist() == pytest.approx(
        [4.0 + math.log(2 / math.sqrt(3)), 1.0 + math.log(2 / math.sqrt(3))]
    )
    assert r["consistency"].tolist() == [1.0, 1.0]
    L2 = L.clone()
    L2[:2, 0] = -50.0  # class 0's flow forgets its own samples: Eq. 3 does not move
    assert FlowRelabel().nd_scores(L2, y, z)["foreign_nll"].tolist() == r["foreign_nll"].tolist()


MEANS = torch.tensor([[0.0, 0.0], [4.0, 0.0], [2.0, 3.464]])


def _clusters(extra_z=None, n=300):
    g = torch.Generator().manual_seed(0)
    z = torch.cat([MEANS[c] + 0.3 * torch.randn(n, 2, generator=g) for c in range(3)])
    y = torch.arange(3).repeat_interleave(n)
    if extra_z is not None:
        z, y = torch.cat([z, extra_z]), torch.cat([y, torch.zeros(len(extra_z), dtype=torch.long)])
    return z, y


def _defense(**kw):
    # beta_nd is a scale calibration (see flow_relabel.py): in this 2-d world of clusters 13 sigma apart
    # the clean classes score S_ND 11.0, 4.6 and 883 nats/dim and the poisoned target 2.3
    return FlowRelabel(flow={"hidden": 32, "epochs": 15, "batch_size": 32}, beta_nd=3.0, **kw)


def test_flows_flag_no_class_on_clean_features():
    z, y = _clusters()
    verdict, extra, *_ = _defense().cleanse(z, y, 3)
    assert extra["nd_flagged"] == [] and extra["d_flagged"] == []
    assert verdict.kept.all() and torch.equal(verdict.labels, y)


def test_flows_relabel_a_non_disruptive_poison_to_its_source():
    g = torch.Generator().manual_seed(1)
    poison = torch.cat(
        [
            MEANS[1] + 0.3 * torch.randn(150, 2, generator=g),
            MEANS[2] + 0.3 * torch.randn(150, 2, generator=g),
        ]
    )  # labeled 0, look like 1 and 2
    z, y = _clusters(poison)
    verdict, extra, *_ = _defense().cleanse(z, y, 3)
    assert extra["nd_flagged"] == [0] and extra["d_flagged"] == []
    assert extra["s_nd"] == extra["s_nd_foreign_nll"] and extra["nd_reading"] == "foreign_nll"
    assert extra["s_nd"][0] < 3.0 < min(extra["s_nd"][1:])
    is_poison = torch.arange(len(y)) >= 900
    relabeled = verdict.kept & (verdict.labels != y)
    assert relabeled.sum() >= 80 and is_poison[relabeled].float().mean() >= 0.95  # almost only poisoned ones
    true = torch.cat([torch.arange(3).repeat_interleave(300), torch.tensor([1] * 150 + [2] * 150)])
    assert (verdict.labels[relabeled] == true[relabeled]).float().mean() > 0.9
    assert not verdict.kept[~is_poison & (y != 0)].logical_not().any()  # other classes untouched


def test_flows_remove_a_disruptive_poison_cluster():
    g = torch.Generator().manual_seed(2)
    z, y = _clusters(torch.tensor([12.0, 12.0]) + 0.1 * torch.randn(200, 2, generator=g))
    verdict, extra, *_ = _defense().cleanse(z, y, 3)
    assert extra["d_flagged"] == [0] and extra["nd_flagged"] == []
    is_poison = torch.arange(len(y)) >= 900
    assert not verdict.kept[is_poison].any() and (verdict.labels == y).all()


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"variant": "clip"}, "variant"),
        ({"sd_direction": "ge"}, "sd_direction"),
        ({"alpha": 0.7}, "alpha"),
        ({"nd_score": "x"}, "nd_score"),
        ({"nd_units": "bits"}, "nd_units"),
    ],
)
def test_flow_relabel_rejects_bad_settings(kw, key):
    with pytest.raises(ConfigError, match=key):
        FlowRelabel(**kw)


def test_foreign_share_exact():
    """foreign_share: per class c, the share of the samples not labeled c whose best class other
    than their own is c; decide() flags it above beta_share."""
    L = torch.tensor(
        [
            [0.0, -1.0, -2.0],  # label 0: best other class 1
            [0.0, -3.0, -2.0],  # label 0: best other 2
            [-1.0, 0.0, -5.0],  # label 1: best other 0
            [-4.0, 0.0, -3.0],  # label 1: best other 2
            [-1.0, -2.0, 0.0],  # label 2: best other 0
        ]
    )
    y = torch.tensor([0, 0, 1, 1, 2])
    share = foreign_share(L, y)
    assert share.tolist() == pytest.approx([2 / 3, 1 / 3, 2 / 4])  # class 0: 2 of the 3 samples of 1 and 2
    assert foreign_argmax(L, y).tolist() == [1, 2, 0, 2, 0]
    fr = FlowRelabel(nd_score="foreign_share", beta_share=0.6)
    _, extra, *_ = fr.decide(L, y, torch.randn(5, 2), epochs=1)
    assert extra["nd_reading"] == "foreign_share" and extra["nd_flagged"] == [0]
    assert extra["s_nd_foreign_share"] == pytest.approx(share.tolist())
    _, extra, *_ = FlowRelabel().decide(L, y, torch.randn(5, 2), epochs=1)  # Eq. 3 is still the default
    assert extra["nd_reading"] == "foreign_nll"


def test_knn_votes_only_from_voters():
    nn = torch.tensor([[1, 2], [0, 2], [0, 1]])
    y = torch.tensor([0, 1, 1])
    s, majority, share = knn_consistency(nn, y, 2, voters=torch.tensor([True, True, False]))
    assert s.tolist() == [0.0, 0.0, 0.5] and majority[0] == 1 and share[0] == 1.0


def test_net_outflow_exact():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    majority = torch.tensor([1, 2, 0, 0, 1, 0, 2, 2])  # two class-0 samples sit elsewhere, one class-1 among 0s
    flagged = torch.tensor([True, True, False, False, False, True, False, False])
    a = net_outflow(y, majority, flagged, 3)
    # class 0: (2 out - 1 in) / 4; class 1: (1 out - 1 in) / 2; class 2: (0 - 1) / 2
    assert a.tolist() == pytest.approx([0.25, 0.0, -0.5])
    assert outlier_classes(
        torch.tensor([0.0, 0.01, -0.01, 0.02, 0.5, -0.02, 0.0, 0.01, 0.0, -0.01])
    ).nonzero().flatten().tolist() == [4]
    assert not outlier_classes(torch.tensor([0.05, -0.04, 0.06, 0.03, -0.02, 0.0, 0.04, -0.05, 0.02, 0.01])).any()
    # the net outflows of clean digits (run 2026-11-30): class 9 is an outlier by the z-score alone,
    # but under the 0.3 floor; BadNets on digits puts the target at 0.50
    clean = torch.tensor([0.014, -0.066, 0.095, 0.007, -0.014, -0.161, -0.020, -0.102, 0.0, 0.247])
    assert outlier_classes(clean).nonzero().flatten().tolist() == [9]
    assert not outlier_classes(clean, min_outflow=0.3).any()
    badnets = torch.tensor([0.502, -0.147, 0.009, -0.217, -0.221, -0.109, -0.238, -0.114, -0.143, 0.116])
    assert outlier_classes(badnets, min_outflow=0.3).nonzero().flatten().tolist() == [0]
    # the dominant-class gate on the same vectors: clean shut by the floor (0.247 < 0.3, though
    # 2.6 x the runner-up), BadNets open (0.502 = 4.3 x 0.116)
    assert not dominant_class(clean).any()
    assert dominant_class(badnets).nonzero().flatten().tolist() == [0]
    assert dominant_class(clean, min_outflow=0.2).nonzero().flatten().tolist() == [9]
    # a top class above the floor but under twice the runner-up stays shut; a runner-up at or
    # below zero always passes the ratio
    assert not dominant_class(torch.tensor([0.1, 0.45, 0.3])).any()
    assert dominant_class(torch.tensor([0.1, 0.45, 0.3]), dominance=1.4).tolist() == [False, True, False]
    assert dominant_class(torch.tensor([-0.2, 0.31, -0.1])).tolist() == [False, True, False]
    assert dominant_class(torch.tensor([0.3, 0.3, -0.1]), dominance=1.0).sum() == 1  # one class at most


def _knn_world(poison: int, seed: int = 0):
    """Ten Gaussian classes of 60 in 10-d, cats and dogs (3 and 5) overlapping both ways; `poison`
    class-1 samples labeled as the target 0."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(10) * 4
    centres[5] = centres[3] * 0.9 + centres[5] * 0.5  # classes 3 and 5 confuse each other
    y = torch.arange(10).repeat_interleave(60)
    h = centres[y] + torch.randn(600, 10, generator=g)
    given = y.clone()
    given[60 : 60 + poison] = 0
    return h, y, given


def test_ssl_knn_gate_cleanses_only_the_target_class():
    from backdoor_bench.defenses.ssl_knn import SSLKNN
    from tests.unit.contexts import knn_context as knn_ctx

    for poison, expect in ((0, []), (20, [0])):
        h, y, given = _knn_world(poison)
        # 20 poisoned of the target's 80 samples: A = 0.21, so the floor is lowered to 0.2; three of
        # the ten toy classes have A = 0 exactly, which makes the MAD small and the target's anomaly
        # index 2.87 (medians of an even count average the middle two): the threshold is lowered too
        zgate = SSLKNN(k=10, class_gate="outflow", min_outflow=0.2, class_threshold=2.5).run(knn_ctx(h, given))
        assert zgate.extra["gate_opened"] == expect
        assert zgate.extra["class_gate"] == "outflow" and zgate.extra["class_threshold"] == 2.5
        assert zgate.extra["min_outflow"] == 0.2 and zgate.extra["dominance"] is None
        # the default gate (dominant) at the same floor opens the same class
        out = SSLKNN(k=10, min_outflow=0.2).run(knn_ctx(h, given))
        assert out.extra["gate_opened"] == expect
        assert out.extra["class_gate"] == "dominant" and out.extra["dominance"] == 2.0
        assert out.extra["class_threshold"] is None
        assert (out.verdict.kept == zgate.verdict.kept).all() and (out.verdict.labels == zgate.verdict.labels).all()
        if poison:  # at the default floor (0.3) this light poisoning is left alone
            assert SSLKNN(k=10).run(knn_ctx(h, given)).extra["gate_opened"] == []
        assert out.extra["embedding"] == "projector" and out.extra["embedding_dim"] == 10
        changed = ~out.verdict.kept | (out.verdict.labels != given)
        if poison:
            hit = changed[60:80]  # a few poisoned samples have poisoned neighbours (a known risk of kNN cleansing)
            assert hit.sum() >= 18 and (out.verdict.labels[60:80][hit] == 1).all()  # back to the source
            assert changed.sum() <= 20 + 6
        else:
            assert not changed.any()  # a clean set is left alone, confused classes included
        ungated = SSLKNN(k=10, class_gate="none", embedding="backbone").run(knn_ctx(h, given))
        assert ungated.extra["gate_opened"] == list(range(10)) and ungated.extra["class_threshold"] is None
        assert (~ungated.verdict.kept | (ungated.verdict.labels != given))[given != 0].any()  # 3 <-> 5 flips


def test_cross_fit_removes_the_memorisation_of_small_classes():
    """Two classes drawn from the SAME distribution: flows that score their own training samples
    memorise them and call the classes consistent; held-out (cross-fitted) densities do not."""
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(48, 8, generator=g), torch.arange(2).repeat_interleave(24)
    flow = {"hidden": 64, "epochs": 150, "batch_size": 16, "lr": 3e-3}
    own = label_consistency(FlowRelabel(flow=flow).log_densities(z, y, 2, 0, 150), y).mean()
    held_out = label_consistency(FlowRelabel(flow=flow, cross_fit=True).log_densities(z, y, 2, 0, 150), y).mean()
    assert own > 0.8 and held_out < 0.7


def test_ssl_embedding_projector_and_backbone_exact():
    from backdoor_bench.defenses.ssl_knn import ssl_embedding
    from tests.unit.contexts import knn_context as knn_ctx

    h = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.5]])
    proj = torch.nn.Linear(2, 3, bias=True)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]]))
        proj.bias.copy_(torch.tensor([0.0, 1.0, 0.5]))
    ctx = knn_ctx(h, torch.tensor([0, 1, 1]), projector=proj)
    z = ssl_embedding(ctx.ssl_backbone(), ctx.train.x, "projector")
    assert z.tolist() == [[1.0, 4.0, -3.5], [3.0, 3.0, 2.5], [0.0, 1.5, -0.5]]
    assert ssl_embedding(ctx.ssl_backbone(), ctx.train.x, "backbone").tolist() == h.tolist()


def test_ssl_knn_projector_embedding_changes_the_neighbours():
    """The embedding decides the neighbourhoods: the backbone features group the samples by class
    (consistent); the projector keeps only a third coordinate g that cuts across the classes."""
    from backdoor_bench.defenses.ssl_knn import SSLKNN
    from tests.unit.contexts import knn_context as knn_ctx

    y = torch.tensor([0, 0, 0, 1, 1, 1])
    g = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, -1.0])
    h = torch.cat([10 * torch.nn.functional.one_hot(y, 2).float(), g[:, None]], 1)
    keep_g = torch.nn.Linear(3, 2)  # z = [g, 1]
    with torch.no_grad():
        keep_g.weight.copy_(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
        keep_g.bias.copy_(torch.tensor([0.0, 1.0]))
    kw = {"k": 2, "class_gate": "none", "relabel": False}
    assert SSLKNN(embedding="backbone", **kw).run(knn_ctx(h, y, projector=keep_g)).verdict.kept.all()
    out = SSLKNN(embedding="projector", **kw).run(knn_ctx(h, y, projector=keep_g))
    # sample 2 (class 0) sits among 4 and 5 (class 1), sample 3 (class 1) among 0 and 1: s = 0;
    # the others have one neighbour of their class each: s = 0.5, not below tau_f
    assert out.verdict.kept.tolist() == [True, True, False, False, True, True]
    assert out.extra["embedding_dim"] == 2


def test_ssl_knn_rejects_an_unknown_embedding():
    from backdoor_bench.defenses.ssl_knn import SSLKNN

    with pytest.raises(ConfigError, match="defense.embedding"):
        SSLKNN(embedding="head")


def test_cached_model_stores_extras_and_rebuilds_an_entry_without_them(tmp_path):
    """The SSL backbone's cache entry carries the projector: a reuse fills `extras` from it, and an
    entry written before the projector was stored is rebuilt once."""
    from backdoor_bench.cache import ArtifactCache
    from backdoor_bench.runner import cached_model as _cached_model

    cache, spec, builds = ArtifactCache(tmp_path), {"role": "ssl", "x": 1}, []

    def build(checkpoint=None):
        builds.append(checkpoint)
        extras["projector"] = {"w": torch.tensor([float(len(builds))])}
        return torch.nn.Linear(1, 1)

    cache.store("ssl_backbone", spec, {"state_dict": torch.nn.Linear(1, 1).state_dict()})  # an old entry
    extras = {"projector": None}
    _cached_model(cache, "ssl_backbone", spec, build, lambda: torch.nn.Linear(1, 1), extras)
    assert len(builds) == 1 and extras["projector"]["w"].tolist() == [1.0]
    extras = {"projector": None}
    _cached_model(cache, "ssl_backbone", spec, build, lambda: torch.nn.Linear(1, 1), extras)
    assert len(builds) == 1 and extras["projector"]["w"].tolist() == [1.0]  # reused, not rebuilt
    plain = _cached_model(cache, "ssl_backbone", spec, build, lambda: torch.nn.Linear(1, 1))
    assert len(builds) == 1 and isinstance(plain, torch.nn.Linear)  # users without extras: as before
