"""Attacks that train the backdoored model themselves (`trains_model`): a trigger generator learned
jointly with the classifier (IAD, LIRA). The attacker delivers a trained model; its poisoned
samples exist only inside its own training loop, generated afresh for every batch.

How the run uses such an attack (`pipeline.attack_model`, `Runner.attack_model`): the runner
builds a fresh classifier of the run's architecture and calls `train_model(tools, clean, model)`,
which trains it in place through `tools.fit` (stage lengths under the trainer's caps:
`stage_lengths`) and returns the trained generator. Both are cached in one `attack_model` entry
(the classifier's weights, the generator's state dict beside them; loaded with `weights_only`),
keyed by the data, the attack's config with its capped stage lengths, the model, the training
recipe, the augmentation and the seed. On a reuse the runner loads the state into
`new_generator(clean)`. `use_generator` then makes it the trigger of `apply` (test time, uint8)
and of `stamp` (the stored training set), and the defenses receive the classifier as
`ctx.backdoored_model()`, exactly as they receive the model of standard training for any other
attack.

The stored training set the defenses see (`stored_set`, a sentence written to results.json with
`data.train_time_poisoning: true`) is what BackdoorBench stores for the attack: IAD's is
regenerated once with the final generator, LIRA's is the clean set.
"""

from __future__ import annotations

import torch
from torch import nn

from backdoor_bench.attacks.base import Attack, AttackTools
from backdoor_bench.data import ImageSet
from backdoor_bench.errors import ConfigError


def down_levels(size: int, most: int) -> int:
    """How many times a generator halves a `size` x `size` image: at most `most`, while the side
    stays even and at least 2 (32 px: 3 or 4; 16 px: 3; 8 px: 2; 28 px: 2)."""
    n = 0
    while n < most and size % 2 == 0 and size // 2 >= 2:
        size, n = size // 2, n + 1
    return n


class Normalized(nn.Module):
    """Base of the generators: the dataset's per-channel normalisation as buffers, so a generator
    sees normalised inputs (as the classifier's first layer does) and its state dict carries them."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GeneratorAttack(Attack):
    """Base of the attacks that train the classifier with a trigger generator.

    A subclass defines `new_generator(data)` (an untrained `Normalized` generator),
    `train_model(tools, data, model)` (train `model` in place, return the generator),
    `stage_lengths(tools)` (its capped stage lengths, which enter the cache keys) and
    `trigger(generator, x)` (the trigger on float images in [0, 1], differentiable); `stored_set`
    says what the stored training set holds."""

    needs_tools = True
    trains_model = True
    stored_set = ""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._generator: nn.Module | None = None

    # -- the parts an attack defines -------------------------------------------------------------
    def new_generator(self, data: ImageSet) -> nn.Module:
        raise NotImplementedError

    def train_model(self, tools: AttackTools, data: ImageSet, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def stage_lengths(self, tools: AttackTools) -> dict:
        raise NotImplementedError

    def trigger(self, generator: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared mechanics ------------------------------------------------------------------------
    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        if shape[1] != shape[2] or down_levels(shape[1], 1) < 1:
            raise ConfigError(
                f"attack={self.name} needs square images with an even side of at least 4, got {shape[1]}x{shape[2]}"
            )

    def poison_spec(self, cfg: dict) -> dict:
        """The config and the capped stage lengths: what determines the trained generator, hence
        the stored training set and the classifier."""
        return {**super().poison_spec(cfg), "stages": self.stage_lengths(self.require_tools())}

    def new_seeded_generator(self, tools: AttackTools, data: ImageSet) -> nn.Module:
        """`new_generator(data)` initialised from the run's seed, the global random state untouched."""
        with torch.random.fork_rng():
            torch.manual_seed(tools.seed)
            return self.new_generator(data)

    def use_generator(self, generator: nn.Module) -> None:
        """The trained generator becomes the trigger of `apply` and `stamp`."""
        self._generator = generator.cpu().eval()

    def generator(self) -> nn.Module:
        if self._generator is None:
            raise RuntimeError(
                f"attack={self.name} trains its trigger generator with the model: call attack.bind(tools), "
                "then pipeline.attack_model, first"
            )
        return self._generator

    def on_uint8(self, fn, x: torch.Tensor, *more: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """`fn(generator, xb, *moreb)` on float batches in [0, 1] of uint8 images `x` (and aligned
        `more`), on the attack's device, without gradients; rounded back to uint8 on the CPU."""
        gen = self.generator()
        device = self.tools.device if self.tools is not None else torch.device("cpu")
        gen.to(device)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = [t[i : i + batch_size].to(device).float() / 255 for t in (x, *more)]
                out.append((fn(gen, *xb).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        gen.cpu()
        return torch.cat(out) if out else x.clone()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.on_uint8(self.trigger, x)
