"""FAB(-T) and Square: the threat model, exactness on linear models, repeatability, the protocol."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from torch import nn

from cnn_aliasing.attacks import Norm, ThreatModel, attack_options, create_attack, list_attacks
from cnn_aliasing.attacks.fab import FAB, project_onto_hyperplane_box
from cnn_aliasing.attacks.square import Square, l2_window_pattern, p_schedule
from cnn_aliasing.errors import CnnAliasingError

SHAPE = (3, 8, 8)
NORMS = ("Linf", "L2")


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "Linf" else flat.norm(dim=1)


def _small_net(seed: int = 0, n_classes: int = 10) -> nn.Module:
    """A small non-linear model (convolutions cost too much on a busy 2-core machine)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(SHAPE), 32), nn.ReLU(), nn.Linear(32, n_classes)
    ).eval()


def _linear(seed: int = 0, n_classes: int = 10) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), n_classes)).eval()


def _images(n: int, seed: int = 1, spread: float = 1.0) -> torch.Tensor:
    """Images in [0, 1]; ``spread < 1`` keeps them near 0.5, away from the box."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + spread * (torch.rand(n, *SHAPE, generator=g) - 0.5)


def _predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _run(attack, model, x, y, norm, eps, seed=0):
    return attack(model, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(seed))


# --- the projection FAB steps with ---------------------------------------------------------------------


def _brute_force_2d(t, w, c, norm):
    """Smallest step norm onto {<w, d> = -c} within the box, by sampling the segment (2-D only).

    The segment is parametrised by the coordinate with the smaller weight, so the sampled steps are
    at most 1e-4 apart; rows where the hyperplane misses the box give NaN.
    """
    s = torch.linspace(0, 1, 10001, dtype=torch.float64)
    swap = w[:, 1].abs() <= w[:, 0].abs()  # sample coordinate 1, solve for coordinate 0
    free = torch.where(swap, 1, 0).unsqueeze(1)
    t_free, t_solved = t.gather(1, free), t.gather(1, 1 - free)
    w_free, w_solved = w.gather(1, free), w.gather(1, 1 - free)
    d_free = -t_free + s
    d_solved = (-c.unsqueeze(1) - w_free * d_free) / w_solved
    inside = (d_solved >= -t_solved) & (d_solved <= 1 - t_solved)
    if norm == "Linf":
        size = torch.maximum(d_free.abs(), d_solved.abs())
    else:
        size = torch.hypot(d_free, d_solved)
    best = torch.where(inside, size, float("inf")).amin(dim=1)
    return torch.where(best.isinf(), float("nan"), best)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_the_closest_point_of_the_hyperplane_in_the_box(norm):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(200, 2, generator=g, dtype=torch.float64)
    w = torch.randn(200, 2, generator=g, dtype=torch.float64)
    c = torch.randn(200, generator=g, dtype=torch.float64)
    d = project_onto_hyperplane_box(t, w, c, norm)
    assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
    best = _brute_force_2d(t, w, c, norm)
    feasible = ~best.isnan()
    assert 50 < feasible.sum() < 200
    torch.testing.assert_close((w * d).sum(dim=1)[feasible], -c[feasible])
    found = d.abs().amax(dim=1) if norm == "Linf" else d.norm(dim=1)
    torch.testing.assert_close(found[feasible], best[feasible], rtol=0, atol=2e-4)
    # where the hyperplane misses the box, the step goes to the box corner nearest to it
    corner = torch.where(w * c.sign().unsqueeze(1) > 0, -t, 1 - t)
    torch.testing.assert_close(d[~feasible], corner[~feasible])


@pytest.mark.parametrize("norm", NORMS)
def test_projection_without_active_box_is_the_plain_projection(norm):
    g = torch.Generator().manual_seed(1)
    t = 0.5 + 0.01 * torch.rand(8, 50, generator=g, dtype=torch.float64)
    w = torch.randn(8, 50, generator=g, dtype=torch.float64)
    w[:, :5] = 0.0  # zero weights must not move
    c = 0.05 * torch.randn(8, generator=g, dtype=torch.float64)
    d = project_onto_hyperplane_box(t, w, c, norm)
    if norm == "Linf":
        expected = -w.sign() * (c / w.abs().sum(dim=1)).unsqueeze(1)
    else:
        expected = -w * (c / w.square().sum(dim=1)).unsqueeze(1)
    torch.testing.assert_close(d, expected)


# --- FAB-T on linear models: the minimal distance is known --------------------------------------------


def _minimal_distance(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Exact minimal adversarial distance of a linear model (the box is never reached here)."""
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    weight = linear.weight.detach()
    with torch.no_grad():
        logits = model(x)
    gaps = logits.gather(1, y.unsqueeze(1)) - logits  # >= 0
    dw = weight.unsqueeze(0) - weight[y].unsqueeze(1)  # (n, K, D)
    dual = dw.abs().sum(dim=2) if norm == "Linf" else dw.norm(dim=2)
    dist = gaps / dual
    dist[torch.arange(len(y)), y] = float("inf")
    return dist.min(dim=1).values


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("norm", NORMS)
def test_fab_t_finds_adversarials_exactly_above_the_minimal_distance(norm, n_classes):
    model = _linear(seed=3, n_classes=n_classes)
    x = _images(32, spread=0.2)
    y = _predicted(model, x)
    d_min = _minimal_distance(model, x, y, norm)
    assert d_min.max() < 0.3 * (1 if norm == "Linf" else 8)  # the box stays inactive
    attack = create_attack("fab-t", n_iter=20)  # a linear model needs few iterations
    for eps in d_min.quantile(torch.tensor([0.2, 0.5, 0.8])).tolist():
        adv = _run(attack, model, x, y, norm, eps)
        fooled = _predicted(model, adv) != y
        assert (_norm(adv - x, norm) <= eps * (1 + 1e-6)).all()
        assert not (fooled & (d_min > eps * (1 + 1e-5))).any(), "an adversarial closer than the minimum"
        # FAB's overshoot (eta = 1.05) settles ~0.5 % above the boundary of a linear model
        assert fooled[d_min * 1.01 <= eps].all()
        assert fooled.any() and not fooled.all()


def test_fab_untargeted_also_reaches_the_minimal_distance():
    """In the reference's order every point runs all iterations, so FAB's result is the minimal one."""
    model = _linear(seed=4)
    x = _images(16, spread=0.2)
    y = _predicted(model, x)
    d_min = _minimal_distance(model, x, y, "L2")
    adv = _run(create_attack("fab", n_iter=20, reference=True), model, x, y, "L2", 10.0)
    assert (_predicted(model, adv) != y).all()
    ratio = _norm(adv - x, "L2") / d_min
    assert (ratio >= 1 - 1e-5).all() and (ratio <= 1.01).all()


# --- both attacks: the threat model, the protocol, repeatability ---------------------------------------

ATTACKS = {
    "fab-t": {"n_iter": 10},
    "fab": {"n_iter": 4, "n_restarts": 2},
    "square": {"n_queries": 100},
}


@pytest.mark.parametrize("norm, eps", [("Linf", 0.05), ("Linf", 0.3), ("L2", 0.5), ("L2", 2.0)])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_adversarials_stay_in_the_ball_and_the_box(name, norm, eps):
    model = _small_net()
    x = _images(16)
    y = _predicted(model, x)
    adv = _run(create_attack(name, **ATTACKS[name]), model, x, y, norm, eps)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert (adv >= 0).all() and (adv <= 1).all()
    assert (_norm(adv - x, norm) <= eps * (1 + 1e-5)).all()
    changed = (adv != x).flatten(1).any(dim=1)
    assert (_predicted(model, adv)[changed] != y[changed]).all()  # only adversarials replace the image


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_same_seed_same_result_and_model_untouched(name):
    model = _small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images(12)
    y = _predicted(model, x)
    attack = create_attack(name, **ATTACKS[name])
    first = _run(attack, model, x, y, "L2", 1.0, seed=5)
    again = _run(attack, model, x, y, "L2", 1.0, seed=5)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_misclassified_points_are_returned_unchanged(name):
    model = _small_net()
    x = _images(10)
    y = _predicted(model, x)
    wrong = torch.arange(10) % 2 == 0
    labels = torch.where(wrong, (y + 1) % 10, y)
    adv = _run(create_attack(name, **ATTACKS[name]), model, x, labels, "Linf", 0.3)
    torch.testing.assert_close(adv[wrong], x[wrong], rtol=0, atol=0)


def test_square_breaks_an_undefended_model_only_when_it_may_perturb():
    model = _small_net(seed=2)
    x = _images(16)
    y = _predicted(model, x)
    attack = create_attack("square", n_queries=200)
    for norm, eps in (("Linf", 0.25), ("L2", 3.0)):
        adv = _run(attack, model, x, y, norm, eps)
        assert (_predicted(model, adv) != y).float().mean() >= 0.9
        torch.testing.assert_close(_run(attack, model, x, y, norm, 0.0), x, rtol=0, atol=0)


class _CountingModel(nn.Module):
    """Two classes, decided by the top-left pixel alone; counts the images it is queried on."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        score = 10 * (x[:, 0, 0, 0] - 0.5)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_square_stops_querying_a_point_once_it_is_misclassified():
    model = _CountingModel().eval()
    x = torch.full((8, *SHAPE), 0.5)
    x[:4, 0, 0, 0] = 0.9  # out of reach at eps = 0.1
    x[4:, 0, 0, 0] = 0.55  # fooled as soon as the pixel goes down
    y = torch.zeros(8, dtype=torch.long)
    n_queries = 200
    adv = _run(Square(n_queries=n_queries), model, x, y, "Linf", 0.1)
    assert (_predicted(model, adv)[4:] == 1).all() and (_predicted(model, adv)[:4] == 0).all()
    robust_rows = 4 * (n_queries + 3)  # clean pass, start, every query, final check
    assert model.rows <= robust_rows + 4 * 50


def _deterministic_candidate(
    self: Square, x: torch.Tensor, x_best: torch.Tensor, iteration: int, threat: ThreatModel, *_: object
) -> torch.Tensor:
    """A candidate that depends only on the best point and the iteration: one pixel set to x +- eps."""
    flat = x_best.flatten(1).clone()
    pixel = (iteration * 37) % flat.shape[1]
    sign = 1.0 if (iteration * 11) % 3 else -1.0
    flat[:, pixel] = (x.flatten(1)[:, pixel] + sign * threat.eps).clamp(0.0, 1.0)
    return flat.view_as(x)


@pytest.mark.parametrize("lookahead", [2, 8, 64])
def test_square_lookahead_follows_the_sequential_search_exactly(lookahead, monkeypatch):
    """With candidates that depend only on the best point and the iteration, evaluating several
    iterations per forward pass must give each point the very sequence of one-at-a-time search."""
    monkeypatch.setattr(Square, "_candidate", _deterministic_candidate)
    model = _small_net(seed=2)
    x = _images(12, seed=3)
    y = _predicted(model, x)
    threat = ThreatModel("Linf", 0.05)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        one = Square(n_queries=300, lookahead=1)._run(model, x, y, threat, gen.manual_seed(0))
        many = Square(n_queries=300, lookahead=lookahead)._run(model, x, y, threat, gen.manual_seed(0))
        fooled = (model(one).argmax(dim=1) != y).sum().item()
    assert 0 < fooled < len(y), "the case should mix points that fall and points that do not"
    assert torch.equal(many, one)


def test_square_lookahead_by_default_fills_a_small_batch_per_device():
    """CPU: up to 4 iterations within 12 rows; elsewhere up to 8 within the batch given; a set value wins."""
    square, cpu, cuda = Square(), torch.device("cpu"), torch.device("cuda")
    assert [square._lookahead(cpu, n, 500) for n in (1, 3, 4, 6, 7, 12, 300)] == [4, 4, 3, 2, 1, 1, 1]
    assert [square._lookahead(cuda, n, 500) for n in (1, 60, 62, 200, 420)] == [8, 8, 8, 2, 1]
    assert Square(lookahead=5)._lookahead(cuda, 420, 500) == 5


def test_fab_t_with_fewer_classes_than_targets_and_binary_models():
    model = _small_net(n_classes=3)
    x = _images(8)
    y = _predicted(model, x)
    adv = _run(create_attack("fab-t", n_target_classes=9, n_iter=10), model, x, y, "Linf", 0.5)
    assert (_norm(adv - x, "Linf") <= 0.5 + 1e-6).all()


# --- registry, options and the schedules ---------------------------------------------------------------


def test_registered_names_and_options():
    assert {"fab", "fab-t", "square"} <= set(list_attacks())
    fab_t = create_attack("fab-t")
    assert isinstance(fab_t, FAB) and fab_t.name == "fab-t" and fab_t.targeted
    assert (fab_t.n_target_classes, fab_t.n_iter, fab_t.n_restarts) == (9, 100, 1)
    assert (fab_t.alpha_max, fab_t.eta, fab_t.beta) == (0.1, 1.05, 0.9)
    assert create_attack("fab").name == "fab" and not create_attack("fab").targeted
    square = create_attack("square")
    assert isinstance(square, Square) and square.name == "square"
    assert (square.n_queries, square.p_init, square.n_restarts, square.rescale_schedule) == (
        5000,
        0.8,
        1,
        False,
    )
    assert attack_options("square") == [
        "n_queries",
        "p_init",
        "n_restarts",
        "rescale_schedule",
        "lookahead",
        "batch_size",
    ]
    assert attack_options("fab") == [
        "n_target_classes",
        "n_iter",
        "n_restarts",
        "alpha_max",
        "eta",
        "beta",
        "reference",
        "batch_size",
    ]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("square", {"n_queries": 0}, "attack 'square' option n_queries must be an integer >= 1, got int 0"),
        ("square", {"n_queries": 2.5}, "option n_queries must be an integer >= 1, got float 2.5"),
        ("square", {"n_restarts": -1}, "option n_restarts must be an integer >= 1, got int -1"),
        ("square", {"p_init": 0.0}, "option p_init must be a number in (0, 1], got float 0.0"),
        ("square", {"p_init": 1.5}, "option p_init must be a number in (0, 1], got float 1.5"),
        ("square", {"p_init": "big"}, "option p_init must be a number in (0, 1], got str 'big'"),
        ("square", {"p_init": math.nan}, "option p_init must be a number in (0, 1], got float nan"),
        ("square", {"rescale_schedule": 1}, "option rescale_schedule must be true or false, got int 1"),
        ("square", {"bogus": 1}, "attack 'square': unknown option 'bogus'; valid options: n_queries, p_init"),
        ("fab-t", {"n_iter": 0}, "attack 'fab-t' option n_iter must be an integer >= 1, got int 0"),
        ("fab-t", {"n_target_classes": True}, "option n_target_classes must be an integer >= 1, got bool"),
        ("fab", {"n_restarts": 0}, "attack 'fab' option n_restarts must be an integer >= 1, got int 0"),
        ("fab", {"alpha_max": -0.1}, "option alpha_max must be a number in [0, 1], got float -0.1"),
        ("fab", {"eta": 0}, "option eta must be a number > 0, got int 0"),
        ("fab", {"beta": 1.5}, "option beta must be a number in [0, 1], got float 1.5"),
        (
            "fab",
            {"targeted": True},
            "attack 'fab': unknown option 'targeted'; valid options: n_target_classes",
        ),
        ("fab-t", {"bogus": 1}, "attack 'fab-t': unknown option 'bogus'; valid options: n_target_classes"),
    ],
)
def test_bad_options_are_errors_naming_attack_option_and_value(name, options, message):
    with pytest.raises(CnnAliasingError) as info:
        create_attack(name, **options)
    assert message in str(info.value)


def test_options_are_checked_however_the_attack_is_built():
    with pytest.raises(CnnAliasingError, match=r"attack 'square' option n_queries .* got int 0"):
        Square(n_queries=0)
    with pytest.raises(CnnAliasingError, match=r"attack 'fab' option eta .* got float -1\.0"):
        FAB(targeted=False, eta=-1.0)


def test_square_rejects_images_it_cannot_attack():
    model = _small_net()
    with pytest.raises(CnnAliasingError, match=r"\(n, c, h, w\), got \(2, 192\)"):
        _run(Square(n_queries=1), model, torch.rand(2, 192), torch.zeros(2, dtype=torch.long), "Linf", 0.1)
    small = torch.rand(2, 3, 4, 4)
    with pytest.raises(CnnAliasingError, match="in L2 needs images >= 5 pixels high, got 4"):
        _run(Square(n_queries=1), model, small, torch.zeros(2, dtype=torch.long), "L2", 0.1)


def test_p_schedule_halves_at_the_reference_iterations():
    steps = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for k, step in enumerate(steps):
        assert p_schedule(step, 10000, 0.8, rescale=False) == pytest.approx(0.8 / 2**k)
        assert p_schedule(step + 1, 10000, 0.8, rescale=False) == pytest.approx(0.8 / 2 ** (k + 1))
    assert p_schedule(0, 5000, 0.8, rescale=False) == 0.8
    assert p_schedule(4999, 5000, 0.8, rescale=False) == pytest.approx(0.8 / 128)
    assert p_schedule(4999, 5000, 0.8, rescale=True) == pytest.approx(0.8 / 512)
    assert p_schedule(26, 5000, 0.8, rescale=True) == pytest.approx(0.8 / 4)  # 26 -> 52 of 10,000


@pytest.mark.parametrize("size", [1, 3, 5, 8])
def test_l2_window_pattern(size):
    pattern = l2_window_pattern(size, torch.float64, torch.device("cpu"))
    assert pattern.shape == (size, size) and pattern.norm().item() == pytest.approx(1.0)
    top = size // 2
    assert (pattern[:top] > 0).all() and (pattern[top:] < 0).all()
    bottom = pattern[top:].abs()
    peak = divmod(int(bottom.argmax()), size)
    assert peak == ((size - top) // 2, size // 2)  # the pyramid peaks at its centre


# --- FAB's random starts (from the second restart on) ------------------------------------------------------


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_random_start_is_the_reference_draw_at_half_eps(norm: Norm) -> None:
    """Linf: 2u - 1 (u uniform), scaled to Linf norm 1; L2: a normal draw scaled to L2 norm 1; either at
    eps / 2 from the image, clamped to [0, 1]. Reference in float64 from the same generator stream."""
    from cnn_aliasing.attacks.fab import _random_start

    x0 = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    x0[0] = 0.5  # an image the clamp cannot touch
    eps = 0.3 if norm == "Linf" else 1.5
    start = _random_start(x0, ThreatModel(norm, eps), torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    if norm == "Linf":
        t = 2 * torch.rand(x0.shape, generator=g).double() - 1
    else:
        t = torch.randn(x0.shape, generator=g).double()
    expected = x0.double()
    for i in range(x0.shape[0]):
        values = [float(v) for v in t[i].flatten()]
        size = max(abs(v) for v in values) if norm == "Linf" else math.sqrt(sum(v * v for v in values))
        expected[i] = (x0[i].double() + 0.5 * eps * t[i] / size).clamp(0.0, 1.0)
    torch.testing.assert_close(start.double(), expected, rtol=0, atol=1e-6)
    assert float(_norm(start[0:1] - x0[0:1], norm)[0]) == pytest.approx(eps / 2, rel=1e-5)


def test_fab_draws_a_random_start_from_the_second_restart_on() -> None:
    from cnn_aliasing.attacks import fab as fab_module

    model = _linear()
    x = _images(4)
    y = _predicted(model, x)
    calls: list[tuple[int, ...]] = []
    real = fab_module._random_start

    def counting(x0: torch.Tensor, threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
        calls.append(tuple(x0.shape))
        return real(x0, threat, generator)

    attack = create_attack("fab", n_iter=2, n_restarts=3)
    with mock.patch.object(fab_module, "_random_start", counting):
        attack(model, x, y, ThreatModel("Linf", 0.0), torch.Generator().manual_seed(0))
    assert calls == [tuple(x.shape), tuple(x.shape)]  # restarts 2 and 3, every point still robust
