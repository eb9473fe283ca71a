"""Eval-mode layers are 1-Lipschitz from ANY state: crafted states that broke the estimate-based
eval normalisations (SOC's stored vectors, CPL's Lanczos from u, BCOP's pre-scaling from
power_u), SOC kernel sizes past the series' radius, zero parameters, and random state_dicts.

Every check is the exact Jacobian (autograd, float64) of the eval layer at several points.
Each crafted state is first shown to fool the estimate the old eval path used.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipsweep.layers import LAYERS, METHODS, BjorckLinear, CayleyLinear
from lipsweep.layers.bcop import BCOPConv2d
from lipsweep.layers.cpl import CPLConv2d
from lipsweep.layers.norms import circular_conv_norm, spectral_norm
from lipsweep.layers.numerics import fantastic_four_matrices, matrix_power_iteration
from lipsweep.layers.soc import SOCConv2d, skew_filter
from tests.layers.lipschitz_check import largest_singular_value

torch.set_num_threads(1)
DTYPE = torch.float64
TOL = 1e-6


def eval_sigma(layer: nn.Module, shape: tuple[int, ...], points: int = 3) -> float:
    """Max over random points of the eval layer's exact Jacobian norm."""
    sigma, _ = largest_singular_value(layer.eval(), shape, points=points)  # type: ignore[arg-type]
    return sigma


# ----------------------------------------------------------------------------- SOC


def test_soc_eval_ignores_a_stored_vector_that_the_filter_annihilates() -> None:
    """u_4 = e_0 and a filter whose channel 0 is coupled only at 1e-6: the stored-vector
    estimate ||R_4 u_4|| is ~1e-6 of the true norm, so L_n = 0.7 L / sigma_hat would be huge."""
    torch.manual_seed(0)
    layer = SOCConv2d(4, 4, 3).to(DTYPE)
    filter_ = torch.randn(4, 4, 3, 3, dtype=DTYPE)
    filter_[:, 0] *= 1e-6
    filter_[0] *= 1e-6
    state = layer.state_dict()
    state["random_conv_filter"] = filter_
    state["u4"] = torch.eye(4, dtype=DTYPE)[0]
    layer.load_state_dict(state)
    r4 = fantastic_four_matrices(skew_filter(filter_))[3]
    stored_estimate = (r4 @ layer.u4).norm()
    assert stored_estimate < 1e-4 * spectral_norm(r4)  # the old eval normaliser
    assert eval_sigma(layer, (4, 5, 6)) <= 1 + TOL


@pytest.mark.parametrize("kernel", [5, 7])
def test_soc_refuses_kernel_sizes_past_the_series_radius(kernel: int) -> None:
    """0.7 k >= 3.5 lets the 12-term series exceed 1 (it does so past 3.379)."""
    with pytest.raises(ValueError, match=r"kernel_size \d is not allowed .*: 1, 3\)$"):
        SOCConv2d(4, 4, kernel)


def test_soc_refuses_a_series_that_is_never_1_lipschitz() -> None:
    with pytest.raises(ValueError, match="none"):
        SOCConv2d(4, 4, 3, eval_terms=5)
    SOCConv2d(4, 4, 3, eval_terms=8)  # 8 terms: <= 1 up to 3.395


def test_soc_eval_filter_norm_is_within_the_radius() -> None:
    """||L_n|| <= 0.7 k from the exact Fantastic Four norms, on the dense zero-padded conv."""
    torch.manual_seed(0)
    layer = SOCConv2d(3, 3, 3).to(DTYPE)
    with torch.no_grad():
        layer.random_conv_filter.normal_()
    kernel, _ = layer.eval().cached_weight()
    circular = circular_conv_norm(kernel, 64, 64).item()  # >= every zero-padded norm
    assert circular <= 0.7 * 3 * (1 + 1e-12)


# ----------------------------------------------------------------------------- CPL


def test_cpl_eval_ignores_a_buffer_outside_the_top_eigenspace() -> None:
    """Channels decoupled, channel 0 ten times stronger, u on channel 1 only: Lanczos from u
    stays in channel 1 and finds sigma / 10, an eval step 100 times too large."""
    torch.manual_seed(0)
    layer = CPLConv2d(2, 2, 3, input_size=6).to(DTYPE)
    kernel = torch.zeros(2, 2, 3, 3, dtype=DTYPE)
    kernel[0, 0] = 10 * torch.randn(3, 3, dtype=DTYPE)
    kernel[1, 1] = torch.randn(3, 3, dtype=DTYPE)
    u = torch.randn(1, 2, 6, 6, dtype=DTYPE)
    u[:, 0] = 0
    state = layer.state_dict()
    state.update(kernel=kernel, u=u / u.norm(), u_is_warm=torch.tensor(True))
    layer.load_state_dict(state)
    assert layer.spectral_norm().item() < 0.2 * layer.guaranteed_norm(6, 6).item()
    assert eval_sigma(layer, (2, 6, 6)) <= 1 + TOL


def test_cpl_with_zero_parameters_trains_and_evaluates() -> None:
    """Zero kernel and bias: training forwards and backwards, then eval, never fail (the
    reference zeroed u after one step and crashed in eigh); the layer is the identity."""
    layer = CPLConv2d(3, 3, 3, input_size=6).to(DTYPE)
    with torch.no_grad():
        layer.kernel.zero_()
        layer.bias.zero_()
    x = torch.randn(2, 3, 6, 6, dtype=DTYPE)
    for _ in range(3):
        layer(x).sum().backward()
    assert layer.u.norm().item() == pytest.approx(1.0)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x)
    state = layer.state_dict()
    state.update(u=torch.zeros_like(layer.u), u_is_warm=torch.tensor(False))
    layer.load_state_dict(state)
    layer.train()
    assert torch.isfinite(layer(x)).all()  # the warm-up Lanczos from a zero buffer


# ----------------------------------------------------------------------------- BCOP


def test_bcop_eval_prescaling_ignores_power_u_in_an_invariant_subspace() -> None:
    """Diagonal parameter matrices diag(10, 1, 1, 1) and power_u = e_1: power iteration stays
    in span(e_1) and estimates 1, so Bjorck would start from sigma = 10 (it diverges past
    sqrt(5)). The eval conv must still be orthogonal."""
    layer = BCOPConv2d(4, 4, 3).to(DTYPE)
    matrices = torch.diag(torch.tensor([10.0, 1.0, 1.0, 1.0], dtype=DTYPE)).repeat(5, 1, 1)
    power_u = torch.eye(4, dtype=DTYPE)[1].repeat(5, 1)
    layer.load_state_dict({**layer.state_dict(), "param_matrices": matrices, "power_u": power_u})
    estimate, _, _ = matrix_power_iteration(matrices, power_u, 10)
    assert (estimate < 10 / math.sqrt(3)).all()  # the old pre-scaling
    kernel, _ = layer.eval().cached_weight()
    spectrum = torch.linalg.svdvals(torch.fft.fft2(kernel, s=(6, 6)).permute(2, 3, 0, 1))
    torch.testing.assert_close(spectrum, torch.ones_like(spectrum), atol=1e-9, rtol=0)
    assert eval_sigma(layer, (4, 5, 6)) <= 1 + TOL


def test_bjorck_linear_eval_prescaling_ignores_power_u() -> None:
    layer = BjorckLinear(4, 4).to(DTYPE)
    weight = torch.diag(torch.tensor([10.0, 1.0, 1.0, 1.0], dtype=DTYPE))
    layer.load_state_dict({**layer.state_dict(), "weight": weight, "power_u": torch.eye(4)[1]})
    q, _ = layer.eval().cached_weight()
    torch.testing.assert_close(q @ q.T, torch.eye(4, dtype=DTYPE), atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- any state


def build(method: str, kernel: int) -> nn.Module:
    if method == "bjorck_linear":
        return BjorckLinear(5, 3).to(DTYPE)
    if method == "cayley_linear":
        return CayleyLinear(4, 4).to(DTYPE)
    return LAYERS[method](3, 3, kernel).to(DTYPE)


def input_shape(method: str) -> tuple[int, ...]:
    return {"bjorck_linear": (5,), "cayley_linear": (4,)}.get(method, (3, 4, 5))


def random_state(
    layer: nn.Module, parameter_scale: float, buffer_scale: float, seed: int
) -> dict[str, torch.Tensor]:
    """Gaussian parameters and buffers at the given scales; integer and bool buffers random."""
    generator = torch.Generator().manual_seed(seed)
    names = {name for name, _ in layer.named_parameters()}
    state = {}
    for key, value in layer.state_dict().items():
        if value.is_floating_point():
            scale = parameter_scale if key in names else buffer_scale
            state[key] = scale * torch.randn(value.shape, generator=generator, dtype=value.dtype)
        else:
            state[key] = torch.randint(0, 2, value.shape, generator=generator).to(value.dtype)
    return state


# (method, kernel size): every conv method at k = 1 and 3, and the two dense heads.
ANY_STATE = [(m, k) for m in METHODS for k in (1, 3)] + [("bjorck_linear", 1), ("cayley_linear", 1)]


@pytest.mark.parametrize("method,kernel", ANY_STATE)
def test_zero_parameters_give_a_1_lipschitz_eval_layer(method: str, kernel: int) -> None:
    layer = build(method, kernel)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()
    layer.train()
    assert torch.isfinite(layer(torch.randn(2, *input_shape(method), dtype=DTYPE))).all()
    assert eval_sigma(layer, input_shape(method)) <= 1 + TOL


@pytest.mark.parametrize("method,kernel", ANY_STATE)
def test_random_state_dicts_give_a_1_lipschitz_eval_layer(method: str, kernel: int) -> None:
    """Parameters at 1e-3, 1 and 1e3 with buffers at the same scale or 0; and random
    parameters with the buffers of another, trained layer."""
    layer = build(method, kernel)
    cases = [(p, b) for p in (1e-3, 1.0, 1e3) for b in (0.0, 1e-3, 1.0, 1e3) if p == b or b == 0]
    for seed, (parameter_scale, buffer_scale) in enumerate(cases):
        layer.load_state_dict(random_state(layer, parameter_scale, buffer_scale, seed))
        sigma = eval_sigma(layer, input_shape(method), points=2)
        assert sigma <= 1 + TOL, f"{method} params x{parameter_scale} buffers x{buffer_scale}"
    donor = build(method, kernel)
    donor.train()
    with torch.no_grad():
        donor(torch.randn(4, *input_shape(method), dtype=DTYPE))  # warm its buffers
    names = {name for name, _ in layer.named_parameters()}
    state = random_state(layer, 1.0, 1.0, seed=99)
    state.update({k: v for k, v in donor.state_dict().items() if k not in names})
    layer.load_state_dict(state)
    assert eval_sigma(layer, input_shape(method)) <= 1 + TOL
