"""Small datasets and stand-in attacker tools for attack unit tests."""

import torch

from backdoor_bench.attacks.base import AttackTools
from backdoor_bench.data import ImageSet
from backdoor_bench.models import build_model


def data(n=200, c=10, ch=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, ch, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(x, torch.arange(n) % c, [str(i) for i in range(c)], (0.5,) * ch, (0.5,) * ch)


def tools(clean: ImageSet, cached=None, cap=None) -> AttackTools:
    """Tools with an untrained small CNN as the 'clean model', an in-memory cache that counts builds
    and `cap` as the trainer's stage caps (epochs and steps; None: uncapped)."""
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    model = build_model(
        OmegaConf.create({"_target_": "backdoor_bench.models.small_cnn.SmallCNN", "width": 4}),
        clean.num_classes,
        clean.shape[0],
        clean.mean,
        clean.std,
    )
    store, builds = {}, []

    def _cached(kind, spec, build):
        key = (kind, repr(sorted(spec.items())))
        if key not in store:
            builds.append(kind)
            store[key] = build()
        return store[key]

    t = AttackTools(
        clean=clean,
        clean_model=lambda e=None: model,
        fit=None,
        cached=cached or _cached,
        device=torch.device("cpu"),
        seed=0,
        spec={"surrogate": "test"},
        stage_length=lambda n, kind="epochs": min(int(n), cap) if cap else int(n),
    )
    t.builds = builds
    return t
