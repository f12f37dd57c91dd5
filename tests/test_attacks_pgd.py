"""PGD and FGSM: the building blocks for adversarial training and their registered attacks."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from attack_models import images, linear_model, predicted, single_thread, tiny_cnn
from cnn_aliasing.attacks import (
    PGD,
    ThreatModel,
    create_attack,
    fgsm,
    pgd_perturb,
)
from cnn_aliasing.attacks.base import per_example_norm
from cnn_aliasing.attacks.pgd import uniform_start
from cnn_aliasing.errors import CnnAliasingError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_uniform_start_inside_ball_and_box(norm: str) -> None:
    x = images(64)
    threat = ThreatModel(norm, 0.1 if norm == "Linf" else 0.5)  # type: ignore[arg-type]
    start = uniform_start(x, threat, torch.Generator().manual_seed(0))
    dist = per_example_norm(start - x, threat.norm)
    assert dist.max() <= threat.eps + 1e-6 and start.min() >= 0 and start.max() <= 1
    assert dist.min() > 0
    assert torch.equal(start, uniform_start(x, threat, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_ball_and_box(norm: str, random_start: bool) -> None:
    model = tiny_cnn()
    x = images(16)
    y = predicted(model, x)
    threat = ThreatModel(norm, 8 / 255 if norm == "Linf" else 0.3)  # type: ignore[arg-type]
    adv = pgd_perturb(model, x, y, threat, 5, threat.eps / 4, random_start, torch.Generator().manual_seed(1))
    assert per_example_norm(adv - x, threat.norm).max() <= threat.eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert not adv.requires_grad


def test_fgsm_is_optimal_on_a_binary_linear_model() -> None:
    """With two classes and logits W x + b, the eps-sign step (clipped to [0, 1]) is the Linf optimum."""
    model = linear_model(2)
    x = images(100)
    y = predicted(model, x)
    eps = 0.02
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    w = linear.weight.double()
    v = w[y] - w[1 - y]
    xf = x.flatten(1).double()
    room = torch.where(v > 0, xf.clamp(max=eps), (1 - xf).clamp(max=eps))
    with torch.no_grad():
        logits = model(x).double()
    worst = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(1)
    worst = worst - (v.abs() * room).sum(1)
    threat = ThreatModel("Linf", eps)
    assert torch.equal(correct(model, fgsm(model, x, y, threat), y), worst > 0)
    assert torch.equal(correct(model, pgd_perturb(model, x, y, threat, 2, eps), y), worst > 0)


def test_usable_in_a_training_loop() -> None:
    """Train mode stays, batch-norm statistics update as in PGD-AT, parameters get no gradient."""
    conv, norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, norm, nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    model.train()
    x = images(8)
    y = torch.arange(8) % 10
    assert norm.running_mean is not None
    before = norm.running_mean.clone()
    adv = fgsm(model, x, y, ThreatModel("Linf", 8 / 255), random_start=True, generator=torch.Generator())
    adv = pgd_perturb(model, x, y, ThreatModel("L2", 0.5), steps=2, step_size=0.2, loss="dlr")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(before, norm.running_mean)
    model(adv).sum().backward()  # the adversarial batch feeds the training step as usual
    assert conv.weight.grad is not None


def test_fgsm_rs_step_and_custom_loss() -> None:
    model = tiny_cnn()
    x = images(8)
    y = predicted(model, x)
    calls = []

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(logits.shape)
        return -logits.gather(1, labels[:, None]).squeeze(1)

    threat = ThreatModel("Linf", 0.04)
    adv = fgsm(model, x, y, threat, random_start=True, generator=torch.Generator().manual_seed(0), loss=loss)
    assert calls == [(8, 10)]
    assert per_example_norm(adv - x, "Linf").max() <= 0.04 + 1e-6
    fgsm_rs = create_attack("fgsm", random_start=True)
    fgsm_plain, pgd = create_attack("fgsm"), create_attack("pgd", steps=10)
    assert isinstance(fgsm_rs, PGD) and isinstance(fgsm_plain, PGD) and isinstance(pgd, PGD)
    assert fgsm_rs.step_for(0.04) == pytest.approx(0.05)
    assert fgsm_plain.step_for(0.04) == pytest.approx(0.04)
    assert pgd.step_for(0.04) == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["pgd", "fgsm"])
def test_registered_attacks_keep_robust_points_clean(name: str) -> None:
    model = tiny_cnn()
    x = images(32)
    y = predicted(model, x, n_wrong=2)
    threat = ThreatModel("Linf", 4 / 255)
    attack = create_attack(name, restarts=2) if name == "pgd" else create_attack(name)
    adv = attack(model, x, y, threat, torch.Generator().manual_seed(0))
    fooled = ~correct(model, adv, y)
    assert torch.equal(adv[~fooled], x[~fooled])
    assert per_example_norm(adv - x, "Linf").max() <= threat.eps + 1e-6
    assert torch.equal(adv, attack(model, x, y, threat, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("pgd", {"steps": 0}, "attack 'pgd' option steps must be an integer >= 1, got int 0"),
        ("pgd", {"restarts": "2"}, "attack 'pgd' option restarts must be an integer >= 1, got str '2'"),
        ("pgd", {"step_size": 0.0}, "attack 'pgd' option step_size must be a number > 0, got float 0.0"),
        ("fgsm", {"step_size": -0.1}, "attack 'fgsm' option step_size must be a number > 0, got float -0.1"),
        ("fgsm", {"random_start": "yes"}, "option random_start must be true or false, got str 'yes'"),
        ("pgd", {"loss": "hinge"}, "option loss must be one of 'ce', 'dlr' or a callable, got str 'hinge'"),
        ("fgsm", {"steps": 3}, "attack 'fgsm': unknown option 'steps'; valid options: step_size, restarts"),
        ("pgd", {"name": "x"}, "attack 'pgd': unknown option 'name'; valid options: steps, step_size"),
    ],
)
def test_bad_options_name_the_attack_option_and_value(name: str, options: dict, message: str) -> None:
    with pytest.raises(CnnAliasingError) as info:
        create_attack(name, **options)
    assert message in str(info.value)


def test_a_bad_loss_of_the_training_building_blocks_is_named() -> None:
    model = linear_model(10)
    x = images(2)
    with pytest.raises(CnnAliasingError, match="loss must be one of 'ce', 'dlr' or a callable, got str 'l1'"):
        pgd_perturb(model, x, predicted(model, x), ThreatModel("Linf", 0.1), 1, 0.1, loss="l1")


@pytest.mark.parametrize(
    ("norm", "eps", "message"),
    [
        ("L3", 0.1, "threat model norm must be one of 'Linf', 'L2', got str 'L3'"),
        ("Linf", -0.1, "threat model eps must be a number >= 0, got float -0.1"),
        ("L2", math.inf, "threat model eps must be a number >= 0, got float inf"),
    ],
)
def test_a_bad_threat_model_is_refused(norm: str, eps: float, message: str) -> None:
    with pytest.raises(CnnAliasingError) as info:
        ThreatModel(norm, eps)  # type: ignore[arg-type]
    assert str(info.value) == message
