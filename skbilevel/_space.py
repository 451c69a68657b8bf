"""Continuous hyperparameter specifications and their unconstrained spaces.

Real is one value; PerFeature, PerStep, PerLayer and SampleWeight are
vectors whose length is fixed at fit time (features, training steps or blocks
of steps, weight layers, examples). Each spec maps an unconstrained tensor u
(the variable the outer optimizer moves) to the constrained hyperparameter
value, and projects u back onto its bounds after each outer step. Positive
quantities live in log space (as in sparse-ho), so a gradient step changes
them by a factor, not an amount.

Each spec also carries what the search needs to know about its kind: ``kind``
(the name adapters check), ``shape`` (sized at fit time), a random starting
point for restarts, and ``express``, how a learned value is set on a plain
scikit-learn estimator (a parameter, a feature rescaling step, or the
``sample_weight`` of ``fit``)."""

import math
from numbers import Integral
from numbers import Real as RealNumber

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer


def _check_bounds(low, high, log):
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, RealNumber) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite real number; got {value!r}.")
    if not low < high:
        raise ValueError(f"low must be smaller than high; got low={low}, high={high}.")
    if log and low <= 0:
        raise ValueError(f"low must be positive when log=True; got low={low}.")


def feature_scale(name, values, power=2):
    """The feature rescaling under which a scalar penalty of 1 equals ``values``.

    A weight ``w_j`` on feature ``s_j x_j`` costs ``|w_j|^p / s_j^p`` in terms
    of the original weight, for a penalty on ``|w_j|^p``: per-feature
    ``alpha_j`` is ``s_j = alpha_j^{-1/p}`` and per-feature ``C_j`` (an inverse
    penalty) is ``s_j = C_j^{1/p}``; ``p = 2`` for L2 (``s_j = alpha_j^{-1/2}``),
    ``p = 1`` for the weighted Lasso (``s_j = 1 / alpha_j``).

    Examples
    --------
    >>> from skbilevel.problems import feature_scale
    >>> feature_scale("alpha", [4.0, 0.25])
    array([0.5, 2. ])
    >>> feature_scale("alpha", [4.0, 0.25], power=1)
    array([0.25, 4.  ])
    """
    values = np.asarray(values, dtype=float)
    exponent = 1.0 / power
    return values**exponent if name == "C" else values**-exponent


def _rescale(X, scale):
    # Sparse features stay sparse: their columns times a sparse diagonal.
    if sp.issparse(X):
        return X.astype(np.float64) @ sp.diags(scale)
    return np.asarray(X, dtype=np.float64) * scale


def with_feature_penalties(estimator, key, values):
    """``estimator`` with per-feature penalties ``values`` for parameter ``key``.

    A Pipeline whose fixed rescaling step (validating the number and names of
    the features it is given) precedes the final estimator, whose penalty
    parameter is set to 1. The power of the penalty the rescaling matches
    (L2 or L1) is the one the estimator's registry record gives.
    """
    # Imported here: the registry imports the specs.
    from .problems import lookup

    name = key.rsplit("__", 1)[-1]
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    power = lookup(final).feature_power(final)
    step = (
        "feature_scale",
        FunctionTransformer(
            _rescale,
            kw_args={"scale": feature_scale(name, values, power)},
            validate=True,
            accept_sparse=True,
            feature_names_out="one-to-one",
        ),
    )
    estimator = clone(estimator).set_params(**{key: 1.0})
    if isinstance(estimator, Pipeline):
        return estimator.set_params(
            steps=estimator.steps[:-1] + [step, estimator.steps[-1]]
        )
    return Pipeline([step, (type(estimator).__name__.lower(), estimator)])


class _Bounded:
    """A value in [low, high], log-scaled or not, of a shape fixed at fit time."""

    kind = "real"
    # Whether the search's objective multiplies the validation loss by
    # 1 + prior(u) (PerFeature's count of departing penalties).
    has_prior = False

    def __init__(self, low, high, init=None, log=True):
        _check_bounds(low, high, log)
        if init is not None and not low <= init <= high:
            raise ValueError(f"init must be in [{low}, {high}]; got init={init}.")
        self.low = low
        self.high = high
        self.init = init
        self.log = log

    def _scale(self, value):
        return math.log(value) if self.log else float(value)

    def initial(self, shape=(), *, dtype=torch.float64, device="cpu"):
        """The initial unconstrained tensor u_0 of the given shape."""
        if self.init is None:
            start = 0.5 * (self._scale(self.low) + self._scale(self.high))
        else:
            start = self._scale(self.init)
        return torch.full(shape, start, dtype=dtype, device=device)

    def to_unconstrained(self, value):
        """The unconstrained tensor u whose value is ``value``."""
        value = torch.as_tensor(value)
        return torch.log(value) if self.log else value.clone()

    def transform(self, u):
        """The constrained value of ``u`` (differentiable)."""
        return torch.exp(u) if self.log else u

    def project(self, u):
        """``u`` clipped so that its value lies in [low, high]."""
        return u.clamp(self._scale(self.low), self._scale(self.high))

    def bounds(self):
        """Lower and upper bounds of each entry of ``u``."""
        return self._scale(self.low), self._scale(self.high)

    def clip(self, value):
        """``value`` (float or array) within [low, high] in float64: a value
        computed in float32 at a bound may round just past it."""
        return np.clip(np.asarray(value, dtype=np.float64), self.low, self.high)

    def shape(self, n_features, n_samples, problem):
        """The shape of the value for the data and the inner problem of a run."""
        return ()

    def random_initial(self, shape, rng, *, dtype=torch.float64, device="cpu"):
        """A starting ``u`` drawn uniformly in the bounds (random restarts)."""
        draw = rng.uniform(*self.bounds(), size=shape)
        return torch.as_tensor(draw, dtype=dtype).to(device)

    def express(self, key, value, estimator, fit_params):
        """``estimator`` and ``fit_params`` with the learned ``value`` of ``key``."""
        return clone(estimator).set_params(**{key: value}), fit_params

    def __repr__(self):
        init = "" if self.init is None else f", init={self.init!r}"
        return (
            f"{type(self).__name__}({self.low!r}, {self.high!r}{init}, log={self.log})"
        )

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self).__name__, *sorted(vars(self).items())))


class Real(_Bounded):
    """One continuous hyperparameter in [low, high], learned by hypergradient.

    Parameters
    ----------
    low, high : float
        Bounds of the value; both must be positive when ``log=True``.
    init : float, default=None
        Initial value; ``None`` starts at the (geometric, if ``log``) midpoint.
    log : bool, default=True
        Optimize ``log(value)`` rather than the value, the right scale for
        penalties (``C``, ``alpha``) and kernel widths.

    See Also
    --------
    PerFeature : one such value per input feature.
    PerStep : a learning-rate schedule of the torch MLPs.
    PerLayer : one L2 penalty per layer of the torch MLPs.
    SampleWeight : one weight in [0, 1] per training example.

    Examples
    --------
    >>> from skbilevel import Real
    >>> space = Real(1e-4, 1e4)
    >>> round(float(space.transform(space.initial())), 6)
    1.0
    """


class PerFeature(_Bounded):
    """One L2 penalty per input feature, each in [low, high].

    Learned in log space; refitted as a fixed feature rescaling in front of the
    scikit-learn estimator, so that the estimator's own scalar penalty applies.

    With one hyperparameter per feature, the cross-validation loss alone is
    fitted by the search: a penalty moves to explain the noise of the
    validation folds. The search therefore descends the validation loss times
    ``1 + s * m / d``, where ``d`` is the number of penalties, ``s`` the
    shrinkage and ``m`` counts, smoothly, those that depart from their common
    value: a penalty whose log moves by ``t`` from the common value counts
    ``t**2 / (t**2 + 0.25)`` (half at a factor of 1.65, 0.8 at a factor of
    e). The common value is where most log-penalties lie (the one of 65
    quantiles of the log-penalties with the smallest count), and moves freely.
    A heavy-tailed prior, as in automatic relevance determination: a penalty
    departs only where the validation loss pays ``s / d`` of itself for it.

    The default, ``shrinkage="auto"``, is ``s = max(1.5, 2 d / n)`` with ``n``
    the number of examples the validation loss averages (every example once
    with K-fold): each departing penalty costs at least ``2 / n`` of the
    validation loss, Akaike's cost of a fitted parameter [2]_ (the optimism of
    a loss fitted by ``p`` parameters on ``n`` examples is about ``2 p / n``
    of it), where the penalties are many for the examples; and at least
    ``1.5 / d``, so that the penalties of a few features (where ``2 d / n``
    is small) do not chase the noise of the folds. With ``shrinkage=0`` the
    search descends the cross-validation loss alone.

    Parameters
    ----------
    low, high : float
        Bounds of each penalty, both positive.
    init : float, default=None
        Initial value of every penalty. ``None`` starts every penalty where
        it shrinks the median feature's coefficient by half, where the
        validation loss responds most to each penalty (the linear models:
        Ridge, RidgeClassifier, LogisticRegression, SGD, the GLMs), and
        elsewhere at the geometric midpoint of the bounds. With equal initial
        penalties, L-BFGS-B first descends their common value from the
        midpoint (or ``init``), as a scalar search would, then every penalty
        from this start; the best point of both is the search's.
    shrinkage : "auto" or float, default="auto"
        Weight ``s`` of the count of departing penalties, relative to the
        validation loss; non-negative, or "auto" (above). Measured on the
        synthetic family of ``benchmarks/bench_per_feature.py`` (200
        features): the strength that served best fell with the number of
        examples, 2 rather than 1.5 with 200 of them and 0.5 rather than 1.5
        with 800, as Akaike's term does; on diabetes (10 features) Akaike's
        term alone (0.065) let the penalties fit the folds, 3.1% behind the
        scalar search on one split, where 1.5 kept every split within 0.05%.

    See Also
    --------
    Real : one scalar penalty.

    References
    ----------
    .. [1] M. E. Tipping, "Sparse Bayesian Learning and the Relevance Vector
       Machine", JMLR 2001 (automatic relevance determination).
    .. [2] H. Akaike, "A New Look at the Statistical Model Identification",
       IEEE Transactions on Automatic Control, 1974 (a cost per fitted
       parameter).

    Examples
    --------
    >>> import torch
    >>> from skbilevel import PerFeature
    >>> space = PerFeature(1e-3, 1e3, init=1.0)
    >>> space.transform(space.initial((3,), dtype=torch.float32))
    tensor([1., 1., 1.])
    >>> u = torch.zeros(4, dtype=torch.float64)
    >>> float(space.prior(u, n_samples=100))  # every penalty at the common value
    0.0
    >>> u[0] = 3.0  # one of four moved by a factor e**3
    >>> space.strength(n_penalties=4, n_samples=100)  # max(1.5, 2 * 4 / 100)
    1.5
    >>> round(float(space.prior(u, n_samples=100)), 3)
    0.365
    """

    kind = "per_feature"
    has_prior = True
    # A log-penalty counts half as departed at this distance from the common
    # value (a factor 1.65). On the synthetic family of
    # benchmarks/bench_per_feature.py (seeds 0-2, an earlier form of this
    # count), a width of 0.25 stopped the search within 10 steps (median
    # held-out R^2 0.75 against 0.84) and 1 or 2 gave 0.01 to 0.02 less.
    width = 0.5
    # Candidate common values: quantiles of the log-penalties.
    n_centers = 65

    # shrinkage="auto": at least this weight, and at least Akaike's 2 / n per
    # departing penalty.
    auto_floor = 1.5

    def __init__(self, low, high, init=None, shrinkage="auto"):
        super().__init__(low, high, init=init, log=True)
        if not (isinstance(shrinkage, str) and shrinkage == "auto") and (
            not isinstance(shrinkage, RealNumber)
            or isinstance(shrinkage, bool)
            or not math.isfinite(shrinkage)
            or shrinkage < 0
        ):
            raise ValueError(
                'shrinkage must be "auto" or a non-negative real number; got '
                f"{shrinkage!r}."
            )
        self.shrinkage = shrinkage

    def shape(self, n_features, n_samples, problem):
        """``(n_features,)``: one penalty per feature the estimator sees."""
        return (n_features,)

    def initial(self, shape=(), *, balance=None, dtype=torch.float64, device="cpu"):
        """The initial log-penalties: ``init``, else ``balance`` (within the
        bounds), else the geometric midpoint of the bounds.

        ``balance`` is the penalty that shrinks the median feature by half
        (the inner problem's ``penalty_balance``), where the validation loss
        responds most to each log-penalty.
        """
        if self.init is not None or balance is None:
            return super().initial(shape, dtype=dtype, device=device)
        start = math.log(min(max(balance, self.low), self.high))
        return torch.full(shape, start, dtype=dtype, device=device)

    def _departures(self, u, center):
        t = (u - center) / self.width
        return t**2 / (1.0 + t**2)

    def strength(self, n_penalties, n_samples=None):
        """The weight ``s`` of the count of departing penalties: ``shrinkage``,
        or for "auto" ``max(1.5, 2 * n_penalties / n_samples)``, with
        ``n_samples`` the examples the validation loss averages."""
        if self.shrinkage != "auto":
            return float(self.shrinkage)
        if n_samples is None:
            raise ValueError(
                'shrinkage="auto" needs n_samples, the number of examples the '
                "validation loss averages."
            )
        return max(self.auto_floor, 2.0 * n_penalties / n_samples)

    def prior(self, u, n_samples=None):
        """``strength`` times the fraction of penalties departing from their
        common value (differentiable in ``u``, the log-penalties): the search
        descends the validation loss times ``1 + prior(u)``. ``n_samples``,
        the examples the validation loss averages, sets the "auto" strength."""
        if self.shrinkage == 0 or u.numel() < 2:
            return (u * 0.0).sum()
        strength = self.strength(u.numel(), n_samples)
        levels = torch.linspace(0.0, 1.0, self.n_centers, dtype=u.dtype)
        candidates = torch.quantile(u.reshape(-1), levels.to(u.device))
        with torch.no_grad():
            counts = [self._departures(u, c).sum() for c in candidates]
        # The chosen quantile moves with u, and the gradient follows it.
        center = candidates[int(torch.stack(counts).argmin())]
        return strength * self._departures(u, center).mean()

    def express(self, key, value, estimator, fit_params):
        """A fixed rescaling step in front of the estimator, whose own penalty
        is set to 1 (:func:`with_feature_penalties`); a scalar (a discrete
        value of the same key in another subspace) is the parameter itself."""
        if np.ndim(value) == 0:
            return super().express(key, value, estimator, fit_params)
        return with_feature_penalties(estimator, key, value), fit_params

    def __repr__(self):
        init = "" if self.init is None else f", init={self.init!r}"
        shrinkage = ""
        if self.shrinkage != "auto":
            shrinkage = f", shrinkage={self.shrinkage!r}"
        return f"PerFeature({self.low!r}, {self.high!r}{init}{shrinkage})"


class PerStep(_Bounded):
    """A learning-rate schedule: one value per training step or block of steps.

    For an estimator whose ``fit`` is ``max_iter`` differentiable optimizer
    steps (:class:`~skbilevel.neural_network.TorchMLPClassifier`,
    :class:`~skbilevel.neural_network.TorchMLPRegressor`), the learning rate
    becomes a vector of B values, step t using entry ``floor(t * B /
    max_iter)``: the setting of Franceschi et al. (2017, 2018) where the number
    of hyperparameters grows with the number of steps. Each value lies in
    [low, high] and is learned in log space; the learned schedule is an array
    that the estimator takes as its ``learning_rate``.

    Parameters
    ----------
    low, high : float
        Bounds of each value, both positive.
    init : float, default=None
        Initial value of every step; ``None`` starts at the geometric midpoint
        of the bounds.
    n_blocks : int, default=None
        Number B of values; ``None`` gives one per step (B = ``max_iter``).
        At most ``max_iter``.

    See Also
    --------
    Real : one learning rate for every step.
    PerLayer : one L2 penalty per weight layer.

    References
    ----------
    .. [1] L. Franceschi, M. Donini, P. Frasconi and M. Pontil, "Forward and
       Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skbilevel import BilevelSearchCV, PerStep
    >>> from skbilevel.neural_network import TorchMLPClassifier
    >>> X, y = make_classification(n_samples=60, random_state=0)
    >>> mlp = TorchMLPClassifier((8,), solver="sgd", max_iter=20, random_state=0)
    >>> space = {"learning_rate": PerStep(1e-4, 1.0, init=0.01, n_blocks=4)}
    >>> search = BilevelSearchCV(mlp, space, max_iter=3, cv=2).fit(X, y)
    >>> search.best_params_["learning_rate"].shape
    (4,)
    >>> search.best_estimator_.learning_rate.shape
    (4,)
    """

    kind = "per_step"

    def __init__(self, low, high, init=None, n_blocks=None):
        super().__init__(low, high, init=init, log=True)
        if n_blocks is not None and (
            not isinstance(n_blocks, Integral)
            or isinstance(n_blocks, bool)
            or n_blocks < 1
        ):
            raise ValueError(f"n_blocks must be a positive int; got {n_blocks!r}.")
        self.n_blocks = n_blocks

    def shape(self, n_features, n_samples, problem):
        """``(B,)`` for a problem of ``problem.T`` training steps."""
        n_blocks = problem.T if self.n_blocks is None else self.n_blocks
        if n_blocks > problem.T:
            raise ValueError(
                f"PerStep(n_blocks={n_blocks}) needs at most one value per step, "
                f"but the estimator runs max_iter={problem.T} steps."
            )
        return (n_blocks,)

    def __repr__(self):
        init = "" if self.init is None else f", init={self.init!r}"
        blocks = "" if self.n_blocks is None else f", n_blocks={self.n_blocks!r}"
        return f"PerStep({self.low!r}, {self.high!r}{init}{blocks})"


class PerLayer(_Bounded):
    """One L2 penalty per weight layer of a neural network, each in [low, high].

    For :class:`~skbilevel.neural_network.TorchMLPClassifier` and
    :class:`~skbilevel.neural_network.TorchMLPRegressor`, ``alpha`` becomes one
    value per weight matrix (``len(hidden_layer_sizes) + 1`` of them), learned
    in log space; the learned array is the estimator's ``alpha``.

    Parameters
    ----------
    low, high : float
        Bounds of each penalty, both positive.
    init : float, default=None
        Initial value of every penalty; ``None`` starts at the geometric
        midpoint of the bounds.

    See Also
    --------
    Real : one penalty for every layer.
    PerStep : a learning-rate schedule.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skbilevel import BilevelSearchCV, PerLayer
    >>> from skbilevel.neural_network import TorchMLPClassifier
    >>> X, y = make_classification(n_samples=60, random_state=0)
    >>> mlp = TorchMLPClassifier((8,), max_iter=20, random_state=0)
    >>> space = {"alpha": PerLayer(1e-6, 1.0, init=1e-3)}
    >>> search = BilevelSearchCV(mlp, space, max_iter=3, cv=2).fit(X, y)
    >>> search.best_estimator_.alpha.shape  # hidden layer, output layer
    (2,)
    """

    kind = "per_layer"

    def __init__(self, low, high, init=None):
        super().__init__(low, high, init=init, log=True)

    def shape(self, n_features, n_samples, problem):
        """``(n_layers,)``: one value per weight matrix of the problem's network."""
        return (problem.n_layers,)

    def __repr__(self):
        init = "" if self.init is None else f", init={self.init!r}"
        return f"PerLayer({self.low!r}, {self.high!r}{init})"


def _project_capped_simplex(x, budget):
    """Euclidean projection onto {0 <= x <= 1, sum(x) <= budget} by bisection."""
    clipped = x.clamp(0.0, 1.0)
    if float(clipped.sum()) <= budget:
        return clipped
    low, high = float(x.min()) - 1.0, float(x.max())
    for _ in range(100):
        shift = 0.5 * (low + high)
        if float((x - shift).clamp(0.0, 1.0).sum()) > budget:
            low = shift
        else:
            high = shift
    return (x - high).clamp(0.0, 1.0)


class SampleWeight:
    """One weight in [0, 1] per training example (data hyper-cleaning).

    Noisy or harmful examples are driven to weight 0. The weights are the
    unconstrained variables themselves, projected onto the unit box after each
    outer step (Franceschi et al., 2017); with ``budget``, onto the box
    intersected with the L1 ball ``sum(weights) <= budget``, which forces the
    search to discard examples.

    Parameters
    ----------
    init : float, default=1.0
        Initial weight of every example, in [0, 1].
    budget : float, default=None
        Optional bound on the sum of the weights; a fraction in (0, 1] is read
        as that fraction of the number of training examples.

    References
    ----------
    .. [1] L. Franceschi, M. Donini, P. Frasconi and M. Pontil, "Forward and
       Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.

    Examples
    --------
    >>> import torch
    >>> from skbilevel import SampleWeight
    >>> space = SampleWeight(budget=0.5)
    >>> space.project(torch.tensor([1.2, 0.9, -0.1, 0.4]))
    tensor([1.0000, 0.7500, 0.0000, 0.2500])
    """

    kind = "sample_weight"
    has_prior = False

    def __init__(self, init=1.0, budget=None):
        if not isinstance(init, RealNumber) or not 0.0 <= init <= 1.0:
            raise ValueError(f"init must be in [0, 1]; got init={init!r}.")
        if budget is not None and (not isinstance(budget, RealNumber) or budget <= 0):
            raise ValueError(f"budget must be a positive number; got {budget!r}.")
        self.init = init
        self.budget = budget

    def initial(self, shape, *, dtype=torch.float64, device="cpu"):
        """The initial weights, one per example, projected onto the budget."""
        return self.project(
            torch.full(shape, float(self.init), dtype=dtype, device=device)
        )

    def to_unconstrained(self, value):
        """The weights themselves (the box is handled by projection)."""
        return torch.as_tensor(value).clone()

    def bounds(self):
        """Lower and upper bounds of each weight."""
        return 0.0, 1.0

    def clip(self, value):
        """The weights within [0, 1] in float64."""
        return np.clip(np.asarray(value, dtype=np.float64), 0.0, 1.0)

    def shape(self, n_features, n_samples, problem):
        """``(n_samples,)``: one weight per example of the search."""
        return (n_samples,)

    def random_initial(self, shape, rng, *, dtype=torch.float64, device="cpu"):
        """Weights drawn uniformly in [0, 1], projected onto the budget."""
        draw = torch.as_tensor(rng.uniform(0.0, 1.0, size=shape), dtype=dtype)
        return self.project(draw.to(device))

    def express(self, key, value, estimator, fit_params):
        """The weights multiply the ``sample_weight`` given to ``fit``."""
        fixed = fit_params.get("sample_weight")
        value = np.asarray(value)
        weights = value if fixed is None else value * np.asarray(fixed)
        return estimator, {**fit_params, "sample_weight": weights}

    def transform(self, u):
        """The weights (identity; see :meth:`project`)."""
        return u

    def project(self, u):
        """Projection of ``u`` onto [0, 1]^n (and the L1 budget, if any)."""
        if self.budget is None:
            return u.clamp(0.0, 1.0)
        budget = self.budget * u.numel() if self.budget <= 1 else self.budget
        return _project_capped_simplex(u, budget)

    def holding(self, fixed):
        """This spec with the examples under the boolean mask ``fixed`` held
        at weight 1, outside the box and the budget.

        The search holds the examples in no training fold so: no inner
        problem weighs them, and the refit trains on them unweighted, not at
        ``init`` nor at a share of the budget.

        Examples
        --------
        >>> from skbilevel import SampleWeight
        >>> SampleWeight(init=0.5).holding([False, True]).initial((2,))
        tensor([0.5000, 1.0000], dtype=torch.float64)
        """
        return _HeldSampleWeight(self.init, self.budget, fixed)

    def __repr__(self):
        budget = "" if self.budget is None else f", budget={self.budget!r}"
        return f"SampleWeight(init={self.init!r}{budget})"

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash(("SampleWeight", self.init, self.budget))


class _HeldSampleWeight(SampleWeight):
    """A :class:`SampleWeight` whose examples under ``fixed`` keep weight 1
    (:meth:`SampleWeight.holding`); a budget fraction counts the others."""

    def __init__(self, init, budget, fixed):
        super().__init__(init, budget)
        self.fixed = np.asarray(fixed, dtype=bool)

    def project(self, u):
        """Weight 1 under ``fixed``; the others projected as by SampleWeight."""
        free = ~torch.as_tensor(self.fixed, device=u.device)
        weights = torch.ones_like(u)
        weights[free] = super().project(u[free])
        return weights

    def __eq__(self, other):
        return (
            type(self) is type(other)
            and (self.init, self.budget) == (other.init, other.budget)
            and np.array_equal(self.fixed, other.fixed)
        )

    def __hash__(self):
        return hash(("SampleWeight", self.init, self.budget, self.fixed.tobytes()))


# The spec class behind each kind, for error messages.
SPEC_NAMES = {
    spec.kind: spec.__name__
    for spec in (Real, PerFeature, PerStep, PerLayer, SampleWeight)
}
