"""Hyperparameter specs: unconstrained spaces, projections, validation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from skbilevel import PerFeature, PerLayer, PerStep, Real, SampleWeight


def test_real_log_space_round_trip_and_bounds():
    space = Real(1e-3, 1e2, init=0.5)
    u = space.initial()
    assert float(space.transform(u)) == pytest.approx(0.5)
    assert float(space.to_unconstrained(torch.tensor(0.5))) == pytest.approx(
        np.log(0.5)
    )
    clipped = space.transform(space.project(torch.tensor([-50.0, 0.0, 50.0])))
    np.testing.assert_allclose(clipped.numpy(), [1e-3, 1.0, 1e2], rtol=1e-6)


def test_real_linear_space_and_default_init():
    space = Real(-1.0, 3.0, log=False)
    assert float(space.transform(space.initial())) == pytest.approx(1.0)
    assert float(space.project(torch.tensor(7.0))) == 3.0
    assert float(Real(1e-2, 1e2).transform(Real(1e-2, 1e2).initial())) == (
        pytest.approx(1.0)
    )


def test_per_feature_shape_and_gradient_flows_through_transform():
    space = PerFeature(1e-2, 1e2, init=1.0)
    u = space.initial((4,)).requires_grad_()
    space.transform(u).sum().backward()
    np.testing.assert_allclose(u.grad.numpy(), np.ones(4))  # d exp(u)/du at u=0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"low": 1.0, "high": 1.0}, "smaller than high"),
        ({"low": 0.0, "high": 1.0}, "positive when log=True"),
        ({"low": 1.0, "high": 2.0, "init": 5.0}, "init must be in"),
        ({"low": float("nan"), "high": 2.0}, "finite real number"),
        ({"low": "a", "high": 2.0}, "finite real number"),
    ],
)
def test_real_rejects_bad_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Real(**kwargs)


def test_sample_weight_box_projection():
    space = SampleWeight()
    projected = space.project(torch.tensor([-0.5, 0.3, 1.7]))
    np.testing.assert_allclose(projected.numpy(), [0.0, 0.3, 1.0])
    assert torch.equal(space.initial((3,)), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("budget", [0.3, 4.0])
def test_sample_weight_budget_projection_is_the_euclidean_projection(budget):
    rng = np.random.default_rng(0)
    x = rng.normal(0.6, 0.6, size=12)
    projected = SampleWeight(budget=budget).project(torch.as_tensor(x)).numpy()
    cap = budget * x.size if budget <= 1 else budget
    # Oracle: the same projection as a constrained least-squares problem.
    reference = minimize(
        lambda z: 0.5 * np.sum((z - x) ** 2),
        np.full_like(x, 0.1),
        jac=lambda z: z - x,
        bounds=[(0.0, 1.0)] * x.size,
        constraints=[{"type": "ineq", "fun": lambda z: cap - z.sum()}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    ).x
    np.testing.assert_allclose(projected, reference, atol=1e-6)
    assert projected.sum() <= cap + 1e-9


@pytest.mark.parametrize(
    "kwargs, message",
    [({"init": 1.5}, "init must be in"), ({"budget": -1.0}, "positive number")],
)
def test_sample_weight_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SampleWeight(**kwargs)


def test_specs_compare_by_value_and_repr():
    assert Real(1e-3, 1e3) == Real(1e-3, 1e3)
    assert Real(1e-3, 1e3) != PerFeature(1e-3, 1e3)
    assert repr(PerFeature(0.1, 10.0, init=1.0)) == "PerFeature(0.1, 10.0, init=1.0)"
    assert repr(SampleWeight(budget=0.5)) == "SampleWeight(init=1.0, budget=0.5)"
    assert len({Real(1.0, 2.0), Real(1.0, 2.0)}) == 1


def test_per_step_and_per_layer_shapes_from_the_problem():
    problem = SimpleNamespace(T=10, n_layers=3)
    assert PerStep(1e-3, 1.0).shape(5, 20, problem) == (10,)
    assert PerStep(1e-3, 1.0, n_blocks=4).shape(5, 20, problem) == (4,)
    assert PerLayer(1e-6, 1.0).shape(5, 20, problem) == (3,)
    with pytest.raises(ValueError, match="at most one value per step"):
        PerStep(1e-3, 1.0, n_blocks=11).shape(5, 20, problem)
    space = PerStep(1e-4, 1.0, init=0.01)
    u = space.initial((5,)).requires_grad_()
    np.testing.assert_allclose(space.transform(u).detach().numpy(), np.full(5, 0.01))
    clipped = space.transform(space.project(torch.tensor([-50.0, 50.0])))
    np.testing.assert_allclose(clipped.numpy(), [1e-4, 1.0], rtol=1e-6)


@pytest.mark.parametrize("n_blocks", [0, 2.5, True, "3"])
def test_per_step_rejects_bad_n_blocks(n_blocks):
    with pytest.raises(ValueError, match="n_blocks must be a positive int"):
        PerStep(1e-3, 1.0, n_blocks=n_blocks)


def test_vector_specs_compare_by_value_and_repr():
    assert PerStep(1e-3, 1.0, n_blocks=4) == PerStep(1e-3, 1.0, n_blocks=4)
    assert PerStep(1e-3, 1.0) != PerStep(1e-3, 1.0, n_blocks=4)
    assert PerLayer(1e-3, 1.0) != PerFeature(1e-3, 1.0)
    assert repr(PerStep(1e-4, 1.0, init=0.01, n_blocks=5)) == (
        "PerStep(0.0001, 1.0, init=0.01, n_blocks=5)"
    )
    assert repr(PerLayer(1e-6, 1.0)) == "PerLayer(1e-06, 1.0)"
    with pytest.raises(ValueError, match="positive when log=True"):
        PerLayer(0.0, 1.0)
