"""The mechanism of attacks that train the backdoored model themselves: the runner caches the
classifier with the generator beside it, hands the generator to the attack, and the defenses get
that classifier as their backdoored model (cleansing defenses still retrain with the standard recipe)."""

import torch

from backdoor_bench.attacks.trained import GeneratorAttack, Normalized
from backdoor_bench.defenses.base import Verdict
from backdoor_bench.pipeline import attack_model, defense_context
from backdoor_bench.runner import Runner
from tests.unit.attack_helpers import data
from tests.unit.contexts import tiny_config


class _Offset(Normalized):
    def __init__(self, mean, std):
        super().__init__(mean, std)
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.offset


class _Toy(GeneratorAttack):
    """Training sets the classifier's first parameter to 7 and the generator's offset to 0.25."""

    stored_set = "toy"
    trainings = 0

    def new_generator(self, d):
        return _Offset(d.mean, d.std)

    def stage_lengths(self, tools):
        return {"epochs": tools.stage_length(50)}

    def train_model(self, tools, d, model):
        type(self).trainings += 1
        next(model.parameters()).data.fill_(7.0)
        gen = self.new_seeded_generator(tools, d)
        gen.offset.data.fill_(0.25)
        return gen

    def trigger(self, generator, x):
        return generator(x)


def _run(root, *overrides):
    cfg = tiny_config("model.width=4", *overrides, root=str(root))
    runner, attack, d = Runner(cfg), _Toy(name="toy", num_classes=10), data(n=32, ch=1, size=8)
    return runner, attack, d, attack_model(runner, attack, d)


def test_the_classifier_and_generator_are_cached_together_and_reused(tmp_path):
    _Toy.trainings = 0
    runner, attack, d, model = _run(tmp_path)
    assert _Toy.trainings == 1 and float(next(model.parameters()).flatten()[0]) == 7.0
    assert attack.apply(torch.zeros(1, 1, 8, 8, dtype=torch.uint8)).eq(64).all()  # 0.25 x 255, rounded
    entry = list((tmp_path / "cache" / "attack_model").glob("*/payload.pt"))
    assert len(entry) == 1
    payload = torch.load(entry[0], weights_only=True)
    assert set(payload) == {"state_dict", "generator"} and float(payload["generator"]["offset"]) == 0.25
    _, again, _, model2 = _run(tmp_path)  # a second run: loaded, not trained
    assert _Toy.trainings == 1 and torch.equal(next(model2.parameters()), next(model.parameters()))
    assert again.apply(torch.zeros(1, 1, 8, 8, dtype=torch.uint8)).eq(64).all()
    _run(tmp_path, "trainer.max_stage_epochs=3")  # another capped stage length: another model
    assert _Toy.trainings == 2


def test_defenses_receive_the_attacks_model_and_retrain_with_the_standard_recipe(tmp_path):
    runner, attack, d, model = _run(tmp_path)
    poisoned = attack.poison(d, 0)
    ctx = defense_context(runner, type("D", (), {"needs_clean": False})(), poisoned, d, None, model)
    given = ctx.backdoored_model()
    assert given is not model and torch.equal(next(given.parameters()), next(model.parameters()))
    retrained = ctx.retrain(Verdict(kept=torch.ones(len(d), dtype=torch.bool)))
    assert float(next(retrained.parameters()).flatten()[0]) != 7.0  # standard training, not the attack's
