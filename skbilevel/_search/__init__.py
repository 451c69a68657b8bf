"""BilevelSearchCV and its continuous search path.

- :mod:`._search`: the class (a scikit-learn ``BaseSearchCV``); ``fit``
  validates once and runs the path below.
- :mod:`._parse`: ``param_space`` parsed once into a :class:`SearchSpace`.
- :mod:`._settings`: the bilevel settings resolved per estimator
  (:class:`RunSettings`, ``method_params`` checked).
- :mod:`._objective` and :mod:`._run`: one hypergradient run, its outer
  objective and optimizers (L-BFGS-B, projected Adam), best iterate kept.
- :mod:`._evaluate`: the visited settings scored, ranked and refitted by
  scikit-learn's own search over fixed splits, from the fold solutions.
"""

from ._search import BilevelSearchCV

__all__ = ["BilevelSearchCV"]
