"""Certification: metrics on hand-made logits, the offset cross-entropy, the Lipschitz
estimate and its relation to the guaranteed bound, the certificate of a trained model, the
activation-variance check, and the attack check (certificates are never broken)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.bounds import model_bound
from lipsweep.certify import (
    RADII,
    activation_variances,
    attack_check,
    certified,
    certified_accuracy,
    certify_model,
    evaluate,
    logit_gaps,
    margins,
    pgd_l2_attack,
    radius_key,
    variance_increases,
)
from lipsweep.data import Batches, load_split
from lipsweep.estimate import (
    affine_estimate,
    lipschitz_estimate,
    power_iteration,
    residual_estimate,
    stage_estimates,
)
from lipsweep.layers import LAYERS, METHODS
from lipsweep.loss import (
    DEFAULT_MARGIN,
    DEFAULT_TEMPERATURE,
    OffsetCrossEntropy,
    offset_cross_entropy,
)
from lipsweep.model import ConvNet, lipschitz_layers, stages
from tests.layers.lipschitz_check import jacobian_singular_values, largest_singular_value
from tests.test_model import (
    TINY_SHAPE,
    model_tolerance,
    orthogonal_standard_model,
    tiny_model,
)

SQRT2 = math.sqrt(2)
# Hand-made scores: (logits, label, gap z_y - max_{j != y} z_j, margin)
CASES = [
    ([3.0, 1.0, 0.0], 0, 2.0, 2.0),  # correct, runner-up at 1
    ([1.0, 3.0, 0.0], 0, -2.0, 0.0),  # wrong
    ([2.0, 2.0, 0.0], 0, 0.0, 0.0),  # tie at the top including the label: not correct
    ([2.0, 2.0, 0.0], 2, -2.0, 0.0),  # tie at the top, label elsewhere
    ([0.0, 0.5, 0.25], 1, 0.25, 0.25),  # correct, small margin
]


def case_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([c[0] for c in CASES], dtype=torch.float64)
    return logits, torch.tensor([c[1] for c in CASES])


# ----------------------------------------------------------------------------- metrics


def test_gaps_and_margins_on_hand_made_logits() -> None:
    logits, labels = case_tensors()
    assert logit_gaps(logits, labels).tolist() == [c[2] for c in CASES]
    assert margins(logits, labels).tolist() == [c[3] for c in CASES]


def test_certified_accuracy_thresholds() -> None:
    logits, labels = case_tensors()
    assert certified_accuracy(logits, labels, 0.0) == pytest.approx(2 / 5)  # ties are wrong
    # margin 2 survives eps < 2 / sqrt(2) = 1.414; margin 0.25 only eps < 0.177
    assert certified(logits, labels, 0.17).tolist() == [True, False, False, False, True]
    assert certified(logits, labels, 0.18).tolist() == [True, False, False, False, False]
    assert certified_accuracy(logits, labels, 1.41) == pytest.approx(1 / 5)
    assert certified_accuracy(logits, labels, 1.42) == 0.0
    # an L-Lipschitz model needs margin > sqrt(2) L eps
    assert certified(logits, labels, 0.5, lipschitz=2.0).tolist() == [True] + [False] * 4
    assert certified(logits, labels, 0.75, lipschitz=2.0).tolist() == [False] * 5


def test_margin_exactly_at_the_threshold_is_not_certified() -> None:
    eps = 0.25
    logits = torch.tensor([[SQRT2 * eps, 0.0]], dtype=torch.float64)
    assert not certified(logits, torch.tensor([0]), eps).item()


def test_evaluate_reports_every_radius() -> None:
    logits, labels = case_tensors()
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    result = evaluate(nn.Identity(), batches)
    assert [radius_key(eps) for eps in RADII] == ["cra_36", "cra_72", "cra_108", "cra_255"]
    assert result["accuracy"] == pytest.approx(0.4)
    assert result["cra_36"] == pytest.approx(0.4)  # 0.25 > sqrt(2) 36/255 = 0.1997
    assert result["cra_72"] == pytest.approx(0.2)  # 0.25 < 0.3993
    assert result["cra_108"] == pytest.approx(0.2)
    assert result["cra_255"] == pytest.approx(0.2)  # 2 > sqrt(2)
    assert result["median_margin"] == 0.0  # margins 2, 0, 0, 0, 0.25
    assert result["examples"] == 5
    assert result["loss"] == pytest.approx(offset_cross_entropy(logits, labels).item())


def test_evaluate_restores_training_mode_and_uses_eval() -> None:
    class ModeProbe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not self.training and not torch.is_grad_enabled()
            return x

    probe = ModeProbe().train()
    logits, labels = case_tensors()
    evaluate(probe, [(logits, labels)])
    assert probe.training


# ----------------------------------------------------------------------------- loss


def test_offset_cross_entropy_defaults() -> None:
    assert abs(DEFAULT_MARGIN - 0.399307) < 1e-6  # 2 sqrt(2) 36 / 255
    assert DEFAULT_TEMPERATURE == 0.25


def test_offset_cross_entropy_hand_computed() -> None:
    # Two equal logits: z' = (-m, 0), loss = tau log(1 + exp(m / tau)).
    m, tau = DEFAULT_MARGIN, DEFAULT_TEMPERATURE
    zero = torch.zeros(1, 2, dtype=torch.float64)
    expected = tau * math.log(1 + math.exp(m / tau))
    assert offset_cross_entropy(zero, torch.tensor([0])).item() == pytest.approx(expected)
    # z = (1, 0, -1), y = 1, m = 0.5, tau = 1: z' = (1, -0.5, -1),
    # CE = 0.5 + log(e + e^-0.5 + e^-1).
    z = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    expected = 0.5 + math.log(math.e + math.exp(-0.5) + math.exp(-1))
    got = offset_cross_entropy(z, torch.tensor([1]), margin=0.5, temperature=1.0)
    assert got.item() == pytest.approx(expected)
    # tau = 2 scales logits and loss: 2 CE(z' / 2, y)
    expected = 2 * (0.25 + math.log(math.exp(0.5) + math.exp(-0.25) + math.exp(-0.5)))
    got = offset_cross_entropy(z, torch.tensor([1]), margin=0.5, temperature=2.0)
    assert got.item() == pytest.approx(expected)


def test_offset_cross_entropy_module_and_batch_mean() -> None:
    logits, labels = torch.randn(6, 10, dtype=torch.float64), torch.arange(6)
    per_example = [offset_cross_entropy(logits[i : i + 1], labels[i : i + 1]) for i in range(6)]
    module = OffsetCrossEntropy()
    assert module(logits, labels).item() == pytest.approx(torch.stack(per_example).mean().item())
    shifted = logits - DEFAULT_MARGIN * F.one_hot(labels, 10)
    reference = DEFAULT_TEMPERATURE * F.cross_entropy(shifted / DEFAULT_TEMPERATURE, labels)
    assert module(logits, labels).item() == pytest.approx(reference.item())


# ----------------------------------------------------------------------------- Lipschitz bound


def exact_conv_norm(conv: nn.Module, shape: tuple[int, ...]) -> float:
    """sigma_max of (conv minus its bias) at ``shape`` from the full Jacobian."""
    return jacobian_singular_values(conv, torch.zeros(shape, dtype=torch.float64)).max().item()


def test_affine_estimate_equals_the_exact_norm_of_a_conv() -> None:
    torch.manual_seed(0)
    conv = LAYERS["standard"](4, 4, 3)
    sigma, _, converged = affine_estimate(conv, (4, 8, 8), iterations=5000, rtol=1e-12)
    assert converged
    assert sigma == pytest.approx(exact_conv_norm(conv.double(), (4, 8, 8)), rel=1e-6)


def test_estimate_of_a_standard_model_reaches_its_jacobian_norm() -> None:
    model = tiny_model("standard")
    with torch.no_grad():
        for _, layer in lipschitz_layers(model):
            layer.weight.mul_(2)
    sigma, _ = largest_singular_value(model.eval(), TINY_SHAPE, points=5)
    bound = lipschitz_estimate(model, TINY_SHAPE)
    assert bound >= sigma
    assert bound > 1.5


def centre_tap_norms(model: nn.Module) -> dict[str, float]:
    """Exact norms of ``orthogonal_standard_model``'s convs: sigma_max of the centre taps, which
    exceed 1 by ~1e-7 (float32 QR), as the accurate bound does see."""
    norms = {}
    for name, layer in lipschitz_layers(model):
        k = layer.weight.shape[-1] // 2
        norms[name] = torch.linalg.matrix_norm(layer.weight[:, :, k, k].detach(), ord=2).item()
    return norms


def test_estimate_of_orthogonal_and_scaled_standard_models() -> None:
    model = orthogonal_standard_model()
    exact = math.prod(centre_tap_norms(model).values())
    assert exact == pytest.approx(1.0, abs=1e-5)
    assert lipschitz_estimate(model, TINY_SHAPE) == pytest.approx(exact, rel=1e-12)
    with torch.no_grad():
        model.block1.conv2.weight.mul_(3)
    norms = centre_tap_norms(model)
    bounds = {b.name: b.estimate for b in stage_estimates(model, TINY_SHAPE)}
    assert bounds["block1.conv2"] == pytest.approx(norms["block1.conv2"], rel=1e-12)
    assert norms["block1.conv2"] == pytest.approx(3.0, rel=1e-6)
    assert lipschitz_estimate(model, TINY_SHAPE) == pytest.approx(math.prod(norms.values()))


def clustered_map(n: int = 200, gap: float = 1e-4) -> torch.Tensor:
    """A dense n x n map with singular values^2 1, 1 - gap and n - 2 more in [0, 0.9]."""
    generator = torch.Generator().manual_seed(0)
    top = torch.tensor([1.0, 1.0 - gap], dtype=torch.float64)
    squares = torch.cat([top, torch.linspace(0, 0.9, n - 2, dtype=torch.float64)])
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return squares.sqrt()[:, None] * q.T


def test_power_iteration_estimate_is_exact_on_a_clustered_spectrum() -> None:
    """Top two singular values 5e-5 relative apart: the Lanczos-based estimate is sigma_max to
    1e-10 within 150 matvecs of A^T A and says it has converged."""
    matrix = clustered_map()
    exact = torch.linalg.matrix_norm(matrix, ord=2).item()
    like = torch.zeros(200, dtype=torch.float64)
    sigma, matvecs, converged = power_iteration(lambda v: matrix @ v, (200,), like, 150, 1e-9)
    assert converged and matvecs <= 150
    assert sigma == pytest.approx(exact, rel=1e-10)
    assert sigma <= exact * (1 + 1e-12)


def test_unknown_stage_is_an_error() -> None:
    model = nn.Sequential(nn.Tanh())
    with pytest.raises(TypeError, match="no Lipschitz estimate"):
        lipschitz_estimate(model, (4,))


@pytest.mark.parametrize("method", METHODS)
def test_estimate_of_a_one_lipschitz_model(method: str) -> None:
    model = tiny_model(method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bound = lipschitz_estimate(model, TINY_SHAPE, iterations=500)
    assert bound <= 1 + model_tolerance(method, model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"


@pytest.mark.parametrize("method", ["cpl", "sll"])
def test_residual_estimate_matches_its_formula(method: str) -> None:
    """max(1, lam - 1) with lam = ||S^(1/2) K||^2 and S the layer's own scale; a scale 3 times
    too large is caught. Power iteration may only fall short of the exact value."""
    torch.manual_seed(0)
    extras = {"input_size": 8} if method == "cpl" else {}
    layer = LAYERS[method](4, 4, 3, **extras).double().eval()
    shape = (4, 8, 8)
    kernel, scale = layer.cached_weight(8, 8) if method == "cpl" else layer.cached_weight()

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return scale.sqrt() * F.conv2d(x, kernel, padding=1)

    lam = exact_conv_norm(scaled, shape) ** 2
    if method == "cpl":  # r sigma^2 = 2 sigma^2 / ((1 + 1e-5) sigma_g^2 + 1e-6), sigma_g >= sigma
        sigma = exact_conv_norm(lambda x: F.conv2d(x, kernel, padding=1), shape)
        guaranteed = layer.guaranteed_norm(8, 8).item()
        assert lam == pytest.approx(2 * sigma**2 / ((1 + 1e-5) * guaranteed**2 + 1e-6), rel=1e-9)
        assert 2 * (1 - 2e-5) < lam < 2  # sigma_g is exact here (a dense 256-input map)
    bound, _, _ = residual_estimate(layer, shape, iterations=2000, rtol=1e-12)
    assert bound == pytest.approx(max(1.0, lam - 1), rel=2e-3)
    layer.cached_weight = lambda *size: (kernel, 3 * scale)  # a step size 3 times too large
    bound, _, _ = residual_estimate(layer, shape, iterations=2000, rtol=1e-12)
    assert bound == pytest.approx(3 * lam - 1, rel=2e-3)
    assert bound <= (3 * lam - 1) * (1 + 1e-9)


def test_sandwich_estimate_is_the_all_active_jacobian_norm() -> None:
    """With a bias so large that every ReLU is active at x = 0, the layer is affine near 0 with
    Jacobian 2 A^* B: the estimate equals that Jacobian's exact norm."""
    from lipsweep.estimate import sandwich_estimate

    torch.manual_seed(0)
    layer = LAYERS["sandwich"](3, 3, 3).double().eval()
    with torch.no_grad():
        layer.weight.add_(0.5 * torch.randn_like(layer.weight))
        layer.bias.fill_(100.0)
    shape = (3, 5, 6)
    estimate, _, converged = sandwich_estimate(layer, shape, iterations=2000, rtol=1e-12)
    jacobian = torch.autograd.functional.jacobian(
        lambda v: layer(v.view(1, *shape)).reshape(-1), torch.zeros(math.prod(shape)).double()
    )
    exact = torch.linalg.matrix_norm(jacobian, ord=2).item()
    assert converged and estimate == pytest.approx(exact, rel=1e-6)
    assert 0.1 < exact <= 1 + 1e-9


@pytest.mark.parametrize("method", ["standard", *METHODS])
def test_guaranteed_bound_is_never_below_the_estimate(method: str) -> None:
    """Stage by stage: the guaranteed bound >= the Lanczos estimate (which is <= the norm)."""
    model = tiny_model(method)
    if method == "standard":
        with torch.no_grad():
            model.block1.conv2.weight.mul_(3)
    bound, stages_ = model_bound(model, TINY_SHAPE)
    estimates = stage_estimates(model, TINY_SHAPE, iterations=300)
    assert [name for name, _ in stages_] == [b.name for b in estimates]
    for (name, guaranteed), estimate in zip(stages_, estimates, strict=True):
        assert guaranteed >= estimate.estimate * (1 - 1e-9), name
    assert bound >= lipschitz_estimate(model, TINY_SHAPE, iterations=300) * (1 - 1e-9)
    if method != "standard":
        assert bound <= (1 + 1e-9) ** len(stages_)  # each stage's rounding slack


def test_guaranteed_bound_of_orthogonal_and_scaled_standard_models() -> None:
    """Centre-tap-only kernels: the circular conv's norm is the centre tap's, exactly."""
    model = orthogonal_standard_model()
    with torch.no_grad():
        model.block1.conv2.weight.mul_(3)
    exact = math.prod(centre_tap_norms(model).values())
    bound, stages_ = model_bound(model, TINY_SHAPE)
    slack = (1 + 1e-9) ** len(stages_)  # each stage's rounding slack
    assert exact <= bound <= exact * slack * (1 + 1e-12)
    assert dict(stages_)["block1.conv2"] == pytest.approx(3.0, rel=1e-6)


# ----------------------------------------------------------------------------- variance check


def batch(seed: int = 0, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, *TINY_SHAPE, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("method", METHODS)
def test_activation_variance_never_increases_in_one_lipschitz_models(method: str) -> None:
    model = tiny_model(method)
    variances = activation_variances(model, batch())
    assert len(variances) == len(stages(model)) + 1
    rtol = (1 + model_tolerance(method, model)) ** 2 - 1
    assert variance_increases(variances, rtol) == []


def test_activation_variance_check_catches_an_expansive_layer() -> None:
    model = orthogonal_standard_model()
    assert variance_increases(activation_variances(model, batch())) == []
    with torch.no_grad():
        model.block1.conv2.weight.mul_(3)
    increases = variance_increases(activation_variances(model, batch()))
    names = [name for name, _ in stages(model)]
    assert names[increases[0] - 1] == "block1.conv2"


# ----------------------------------------------------------------------------- attack check


def orthonormal_linear(inputs: int, classes: int) -> nn.Linear:
    """A dense model with orthonormal rows: exactly 1-Lipschitz, and its certificate is tight
    (moving x by gap / sqrt(2) along q_j - q_y reaches the decision boundary)."""
    layer = nn.Linear(inputs, classes, bias=False).double()
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(inputs, classes, generator=generator, dtype=torch.float64))
    with torch.no_grad():
        layer.weight.copy_(q.T)
    return layer


def test_pgd_stays_in_the_ball_and_matches_the_tight_certificate() -> None:
    model = orthonormal_linear(20, 5)
    generator = torch.Generator().manual_seed(1)
    x = 0.3 * torch.randn(400, 20, generator=generator, dtype=torch.float64)
    y = model(x).argmax(dim=1)  # all correct: gaps spread around the threshold
    eps = 0.1
    adversarial = pgd_l2_attack(model, x, y, eps, steps=30)
    assert ((adversarial - x).norm(dim=1) <= eps * (1 + 1e-9)).all()
    check = attack_check(model, x, y, eps, steps=30)
    assert check.certified_flipped == 0
    assert check.attacked_accuracy >= check.certified_accuracy
    # The certificate is tight here, so a working attack breaks almost every other point.
    gaps = logit_gaps(model(x), y).detach()
    near = ((gaps > 0.95 * SQRT2 * eps) & (gaps <= SQRT2 * eps)).double().mean().item()
    assert check.attacked_accuracy <= check.certified_accuracy + near + 1e-9
    assert 0.1 < check.certified_accuracy < 0.9


def test_attack_check_flags_an_unsound_certificate() -> None:
    """Claiming L = 0.2 for a 1-Lipschitz model certifies points the attack then breaks."""
    model = orthonormal_linear(20, 5)
    x = 0.3 * torch.randn(200, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = model(x).argmax(dim=1)
    assert attack_check(model, x, y, 0.1, lipschitz=0.2, steps=30).certified_flipped > 0


# ----------------------------------------------------------------------------- training


def pooled(x: torch.Tensor) -> torch.Tensor:
    """CIFAR 32 x 32 averaged to 8 x 8, so a CPU test trains in seconds."""
    return F.avg_pool2d(x, 4)


# Sandwich's gradients vanish in this ConvNet (README: The layers): 4 epochs leave it at chance.
VANISHING = {"sandwich"}
# Peak learning rates other than 0.1: AOC's loss spikes at 0.1 (2.4 after the second epoch,
# accuracy 0.19); at 0.03 it learns as BCOP does at 0.1 (0.29 and 0.29), as a search would pick.
PEAK_LR = {"aoc": 0.03}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_short_cifar10_training_is_certified_soundly(method: str, shared_data: Path) -> None:
    """Four epochs of a width-8 ConvNet on the real CIFAR-10 subset (inputs 8 x 8): accuracy
    clearly above chance, PGD breaks no certified test point (attacked acc >= CRA), and the
    guaranteed bound is <= 1 and >= the estimate."""
    train = load_split("cifar10", "train", shared_data)
    test = load_split("cifar10", "test", shared_data)
    torch.manual_seed(0)
    model = ConvNet(method, 8, 3, 10, input_size=8)
    epochs, batches_per_epoch = 4, math.ceil(len(train) / 64)
    lr = PEAK_LR.get(method, 0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, epochs * batches_per_epoch)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for x, y in Batches(train, 64, True, generator):
            loss = offset_cross_entropy(model(pooled(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    test_batches = [(pooled(x), y) for x, y in Batches(test, 256, False, generator)]
    result = evaluate(model, test_batches)
    if method in VANISHING:  # the reason the paper left it out: it does not learn here
        assert result["accuracy"] < 0.2, result
    else:
        assert result["accuracy"] > 0.2, result
    x, y = test_batches[0]
    check = attack_check(model, x[:200], y[:200], RADII[0], steps=20)
    assert check.certified_flipped == 0, check
    assert check.attacked_accuracy >= check.certified_accuracy
    certificate = certify_model(model, test_batches[:1], attack_steps=20, attack_limit=100)
    assert certificate.lipschitz_bound <= (1 + 1e-9) ** len(certificate.stages)
    assert certificate.flipped == 0, certificate.radii
    assert certificate.radii[0].attacked > 0 or method in VANISHING, certificate.radii
    estimate = lipschitz_estimate(model, (3, 8, 8), iterations=300)
    assert estimate <= certificate.lipschitz_bound * (1 + 1e-9)
