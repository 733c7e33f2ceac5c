"""Defense contexts for unit tests, built as the pipeline builds them: a `Runner` over a composed
`trainer=tiny` config (its cache under a temporary folder), and `DefenseContext(runner, train)`.
`knn_context` swaps in SSL features given per training sample; `RecordingRunner` records the
models a defense asks the runner to train."""

from __future__ import annotations

import tempfile

import torch
from hydra import compose, initialize_config_dir

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.base import DefenseContext
from backdoor_bench.runner import Runner
from tests.conftest import CONF


def tiny_config(*overrides: str, root: str | None = None):
    """The run config of `trainer=tiny` (plus `overrides`) with its paths under `root` (default: a
    fresh temporary folder), composed without a Hydra run."""
    root = root or tempfile.mkdtemp(prefix="bb-test-")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "trainer=tiny",
                "logger=none",
                f"paths.root={root}",
                f"paths.output_dir={root}/run",
                f"paths.cache_dir={root}/cache",
                *overrides,
            ],
        )


def context(train: ImageSet, *overrides: str, runner_class=Runner, clean: ImageSet | None = None) -> DefenseContext:
    """A defense context over `train`, as `pipeline.defense_context` builds it."""
    runner = runner_class(tiny_config(*overrides))
    return DefenseContext(runner.without("attack"), train, clean, runner.cfg.paths.output_dir)


class _Lookup(torch.nn.Module):
    """features(x) = the stored vector of the sample whose index is written in x's first pixels."""

    def __init__(self, h):
        super().__init__()
        self.register_buffer("h", h.float())

    def features(self, x):
        return self.h[(x[:, 0, 0, 0] * 255).round().long() + 256 * (x[:, 0, 0, 1] * 255).round().long()]


def knn_context(h: torch.Tensor, y: torch.Tensor, projector: torch.nn.Module | None = None) -> DefenseContext:
    """A context whose SSL backbone's features are the rows of `h` (one per training sample), with an
    identity `ssl_projector` unless one is given, and whose retraining returns an identity."""
    n = len(h)
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = torch.arange(n) % 256, torch.arange(n) // 256
    train = ImageSet(x=x, y=y, classes=[str(c) for c in range(int(y.max()) + 1)])

    class FeatureRunner(Runner):
        def ssl_backbone(self, data):
            model = _Lookup(h)
            object.__setattr__(model, "ssl_projector", projector if projector is not None else torch.nn.Identity())
            return model

        def train_model(self, data, name, **kw):
            return torch.nn.Identity()

        def backdoored_model(self, data):
            return torch.nn.Identity()

    return context(train, runner_class=FeatureRunner)


class RecordingRunner(Runner):
    """Records `(len(data), name, epochs)` of every model it is asked to train; returns `model`."""

    calls: list = []
    model: torch.nn.Module | None = None

    def train_model(self, data, name, *, role=None, loss="ce", epochs=None):
        type(self).calls.append((len(data), name, epochs))
        return type(self).model
