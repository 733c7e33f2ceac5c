"""configure_optimizers: Adam's betas from the config (Sabolic et al.'s SimCLR and flows use (0.9, 0.99))."""

import torch

from backdoor_bench.training.optim import configure_optimizers


def test_adam_takes_betas_from_the_config():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = configure_optimizers(params, {"name": "adam", "lr": 3e-4, "betas": [0.9, 0.99], "schedule": "constant"}, 1)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99) and opt.param_groups[0]["lr"] == 3e-4
    default = configure_optimizers(params, {"name": "adam", "lr": 1e-3, "schedule": "constant"}, 1)
    assert default.param_groups[0]["betas"] == (
        0.9,
        0.999,
    )  # torch's default when the key is absent
