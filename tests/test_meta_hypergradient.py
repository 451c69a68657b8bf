import numpy as np
import pytest
import torch

from skbilevel.hypergrad import unroll
from skbilevel.meta._heads import (
    episode_hypergradient,
    head_logits,
    inner_dynamics,
    train_heads,
    zero_heads,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: on a busy 2-core machine, OpenMP threads only
    # wait for each other, so every op costs a scheduler slice. Restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _episodes(seed, n_episodes=3, n_way=3, n_shot=2, n_query=4, n_in=5):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(
        n_episodes,
        n_way * (n_shot + n_query),
        n_in,
        generator=generator,
        dtype=torch.float64,
    )
    y_sup = torch.arange(n_way).repeat_interleave(n_shot).expand(n_episodes, -1)
    y_qry = torch.arange(n_way).repeat_interleave(n_query).expand(n_episodes, -1)
    return X, y_sup, y_qry


def _network(seed, n_in=5, n_out=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, 6), torch.nn.Tanh(), torch.nn.Linear(6, n_out)
    ).double()


def _meta_loss(network, log_lr, X, y_sup, y_qry, T, alpha, tol=None):
    """The outer objective by plain unrolling, differentiable end to end."""
    features = network(X)
    hparams = {"features": features, "log_lr": log_lr}
    head = zero_heads(X.shape[0], features.shape[2], 3, features)
    head = unroll(inner_dynamics(y_sup, alpha), head, hparams, T, tol=tol)[0]
    logits = head_logits(head, features[:, y_sup.shape[1] :])
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, 3), y_qry.reshape(-1), reduction="sum"
    ) / (y_qry.shape[1] * X.shape[0])


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_hypergradient_matches_finite_differences(alpha):
    """Through T head steps into the network weights and the learning rate."""
    X, y_sup, y_qry = _episodes(0)
    network = _network(0)
    log_lr = torch.tensor(np.log(0.5), dtype=torch.float64)
    alpha = torch.tensor(alpha, dtype=torch.float64)
    features = network(X)
    loss, grad = episode_hypergradient(
        features, log_lr, y_sup, y_qry, T=4, alpha=alpha, method="reverse", tol=0
    )
    features.backward(grad["features"])
    params = list(network.parameters())
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [grad["log_lr"][None]])

    def objective(vector):
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(vector[offset : offset + p.numel()].reshape(p.shape))
                offset += p.numel()
            return _meta_loss(network, vector[-1], X, y_sup, y_qry, 4, alpha)

    point = torch.cat([p.detach().reshape(-1) for p in params] + [log_lr[None]])
    assert float(objective(point.clone())) == pytest.approx(float(loss), rel=1e-12)
    rng = np.random.RandomState(0)
    for _ in range(5):
        direction = torch.as_tensor(rng.randn(point.shape[0]))
        eps = 1e-6
        numeric = (
            objective(point + eps * direction) - objective(point - eps * direction)
        ) / (2 * eps)
        assert float(flat @ direction) == pytest.approx(float(numeric), rel=1e-6)


def test_implicit_hypergradient_matches_finite_differences_of_the_optimum():
    X, y_sup, y_qry = _episodes(1, n_episodes=2)
    network = _network(1)
    alpha = torch.tensor(1.0, dtype=torch.float64)
    log_lr = torch.tensor(np.log(0.5), dtype=torch.float64)
    features = network(X).detach().requires_grad_()
    _, grad = episode_hypergradient(
        features,
        log_lr,
        y_sup,
        y_qry,
        T=1000,
        alpha=alpha,
        method="implicit",
        tol=1e-11,
    )
    # At the optimum the learning rate no longer matters.
    assert float(grad["log_lr"]) == pytest.approx(0.0, abs=1e-8)
    direction = torch.randn(
        features.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    eps = 1e-5
    with torch.no_grad():
        values = [
            _meta_loss(
                torch.nn.Identity(),
                log_lr,
                features + s * eps * direction,
                y_sup,
                y_qry,
                1000,
                alpha,
                tol=1e-11,
            )
            for s in (1, -1)
        ]
    numeric = (values[0] - values[1]) / (2 * eps)
    assert float((grad["features"] * direction).sum()) == pytest.approx(
        float(numeric), rel=1e-5
    )


def test_train_heads_equals_engine_dynamics():
    """The closed-form chunked trainer runs exactly the meta-training map."""
    X, y_sup, _ = _episodes(2)
    features = X[:, : y_sup.shape[1]]
    hparams = {"features": features, "log_lr": torch.tensor(np.log(0.7)).double()}
    alpha = torch.tensor(0.2, dtype=torch.float64)
    expected = unroll(
        inner_dynamics(y_sup, alpha), zero_heads(3, 5, 3, features), hparams, 6
    )[0]
    head = train_heads(
        features, y_sup, 3, T=6, learning_rate=0.7, alpha=0.2, chunk_size=4
    )
    for name in expected:
        torch.testing.assert_close(head[name], expected[name], rtol=1e-12, atol=1e-12)
