"""Fine-Pruning (Liu, Dolan-Gavitt and Garg, "Fine-Pruning: Defending Against Backdooring Attacks
on Deep Neural Networks", RAID 2018, Sec. 3-5).

Backdoor neurons tend to lie dormant on clean inputs, so pruning the last convolutional layer's
channels that clean data activates least removes them; fine-tuning then repairs the accuracy the
pruning cost and weakens what is left of the backdoor.

1. The last feature map: the channels feeding `model.features` (found generically by
   `training.features.last_feature_map`: `backbone.body.6` of small_cnn, `backbone.bn` of
   preact_resnet18, `backbone.net.layer4` of resnet18, `backbone.layer3` of resnet32).
2. The order: each channel's mean activation over the trusted clean subset (global average
   pooling makes `model.features` exactly these spatial means; after the last ReLU), smallest first.
3. Pruning: channels are zeroed one at a time in that order (Liu et al. prune one by one) while
   the accuracy on the trusted clean subset stays within `acc_drop` (relative: (a0 - a) / a0) of
   the unpruned model's; the last mask within the tolerance is kept. Liu et al. stop at a
   validation-accuracy drop the defender chooses; `acc_drop` 0.1 is BackdoorBench's `acc_ratio`
   (`config/defense/fp/cifar10.yaml`), which BackdoorBench measures on the test set and we on the
   clean subset (a defense never sees the test set).
4. Fine-tuning on the clean subset with the mask fixed (a buffer `channel_mask` on the pruned
   layer, applied by a forward hook, so pruned channels stay zero during and after it):
   BackdoorBench's recipe, 100 epochs, batch 256, SGD 0.01, momentum 0.9, weight decay 5e-4, cosine.

Pruning is a mask, not a smaller layer: the model keeps its shape, its state_dict carries the mask.
"""

from __future__ import annotations

import copy
import logging

import torch

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.features import LAST_MAP, layer_name, resolve_layer
from backdoor_bench.training.fit import extract_features, predict
from backdoor_bench.training.recipe import recipe

log = logging.getLogger(__name__)


def pruning_order(features: torch.Tensor) -> torch.Tensor:
    """Channel indices by increasing mean activation over the samples (`features`: [N, C]); ties
    keep the lower index first."""
    return torch.sort(features.double().mean(0), stable=True).indices


def prune_until(order: torch.Tensor, accuracy, acc_drop: float) -> tuple[int, list[float]]:
    """(k, accuracies): prune `order[:k]` for k = 1, 2, ... while `accuracy(pruned)` (a bool mask of
    pruned channels -> accuracy) stays within the relative drop `acc_drop` of `accuracy` with
    nothing pruned; k is the largest count before the first one beyond it (at most all but one
    channel). `accuracies[k]` is the accuracy with k channels pruned, up to the first beyond."""
    pruned = torch.zeros(len(order), dtype=torch.bool)
    accs = [float(accuracy(pruned))]
    k = 0
    for i in range(len(order) - 1):
        pruned[order[i]] = True
        accs.append(float(accuracy(pruned)))
        if accs[0] - accs[-1] > acc_drop * accs[0]:
            break
        k = i + 1
    return k, accs


def _apply_mask(module, _inputs, output):
    return output * module.channel_mask.view(1, -1, 1, 1).to(output.dtype)


def attach_channel_mask(module: torch.nn.Module, channels: int) -> None:
    """A fixed all-ones channel mask on `module`'s output: a buffer `module.channel_mask` [C] (so it
    moves and saves with the model; set it in place) that a forward hook multiplies the output by."""
    module.register_buffer("channel_mask", torch.ones(channels))
    module.register_forward_hook(_apply_mask)


class FinePruning(Defense):
    """Args: `clean_fraction` (the trusted clean subset), `acc_drop` (the relative drop of
    clean-subset accuracy the pruning may cost), `epochs`, `batch_size`, `optimizer` (the
    fine-tuning)."""

    needs_clean = True

    def __init__(
        self,
        name: str = "fp",
        acc_drop: float = 0.1,
        epochs: int = 100,
        batch_size: int = 256,
        optimizer: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        if not 0 < float(acc_drop) < 1:
            raise ConfigError(f"defense.acc_drop={acc_drop} must be a relative accuracy drop in (0, 1)")
        self.acc_drop = float(acc_drop)
        self.recipe = recipe(epochs, batch_size, optimizer or {"name": "sgd", "lr": 0.01})

    def run(self, ctx: DefenseContext) -> Outcome:
        model = copy.deepcopy(ctx.backdoored_model()).cpu()
        clean = ctx.clean
        layer = layer_name(model, clean.x, LAST_MAP)
        order = pruning_order(extract_features(model, clean.x, device=ctx.device))
        pruned_layer = resolve_layer(model, layer)
        attach_channel_mask(pruned_layer, len(order))

        def set_mask(pruned: torch.Tensor) -> None:
            pruned_layer.channel_mask.copy_((~pruned).float())  # the buffer follows the model's device

        def accuracy(pruned: torch.Tensor) -> float:
            set_mask(pruned)
            return float((predict(model, clean.x, device=ctx.device).cpu() == clean.y).float().mean())

        k, accs = prune_until(order, accuracy, self.acc_drop)
        final = torch.zeros(len(order), dtype=torch.bool)
        final[order[:k]] = True
        set_mask(final)
        log.info(
            "fp: pruned %d of %d channels of %s (clean-subset accuracy %.3f -> %.3f; the next channel: %.3f)",
            k,
            len(order),
            layer,
            accs[0],
            accs[k],
            accs[k + 1] if k + 1 < len(accs) else float("nan"),
        )
        r = self.recipe
        ctx.finetune(model, "fp", r.epochs, optimizer=r.optimizer, batch_size=r.batch_size)
        extra = {
            "layer": layer,
            "channels": len(order),
            "pruned": k,
            "pruned_share": round(k / len(order), 6),
            "clean_acc_unpruned": accs[0],
            "clean_acc_pruned": accs[k],
            "pruned_channels": sorted(order[:k].tolist()),
        }
        return Outcome(model=model.cpu(), extra=extra)
