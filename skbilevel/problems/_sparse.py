"""Sparse designs: CSR features kept sparse through the inner problems.

A :class:`SparseDesign` holds a CSR matrix as torch CSR tensors (sharing
scipy's memory) and, for ``X^T @ R``, either a stored transpose (a product
row-wise like ``X @ W``: ``X^T`` taken on the fly by torch is about 35 times
slower) or, on the CPU for a wide design, scipy's product with ``X.T`` (a
view: no memory, about twice the time of the stored transpose). It stands
where a dense ``(n, d)`` or ``(K, n, d)`` tensor stands in :class:`FoldData`,
with the few tensor attributes the adapters read (``shape``, ``dtype``,
``device``, ``dim()``, ``numel()``). Nothing here makes a dense ``(n, d)``
array: the products are sparse, the Gram matrices ``X^T diag(w) X`` are
``(d, d)`` (formed only when ``d`` is small) and the diagonal
preconditioner's column norms are one sparse product.

A wide design on the CPU stores one transpose only, in single precision, for
the loose first products of the conjugate gradient (:meth:`SparseDesign.float`,
with a single-precision copy of the values of ``X``): on the 20,000 x 50,000
benchmark with 2 million entries, 24 MB where a double transpose (24 MB),
single-precision values of both (16 MB) and the preconditioner's squared
entries (8 MB) took 48 MB.

Any linear adapter can use these designs through :func:`matmul`,
:func:`transposed_matmul`, :meth:`SparseDesign.grams` and
:meth:`SparseDesign.squared_transposed_matmul`.
"""

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils import check_array
from torch import Tensor

from ..utils import resolve_device, to_numpy, to_sparse_tensor, to_tensor

# Most features for which Gram matrices (d x d per fold and output) are formed
# from a sparse design; past this, a diagonal preconditioner serves and
# squared losses are solved by Newton's conjugate gradient.
SPARSE_GRAM_FEATURES = 1024


def canonical_csr(X, canonical=True):
    """``X`` validated as float64 CSR; with ``canonical``, with sorted, unique
    indices (copied only when it is not already so)."""
    X = check_array(X, accept_sparse="csr", dtype=np.float64)
    if canonical and not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    return X


def _apply(operand, dense: Tensor) -> Tensor:
    """``operand @ dense``: a torch CSR tensor, or a scipy sparse matrix (the
    transposed view ``X.T`` of a CPU design) through numpy."""
    if isinstance(operand, Tensor):
        return operand @ dense.contiguous()
    product = operand @ to_numpy(dense)
    return to_tensor(product, device=dense.device, dtype=dense.dtype)


class _Product(torch.autograd.Function):
    """``matrix @ dense`` differentiable in ``dense`` to any order, the
    backward product taken with the transpose."""

    @staticmethod
    def forward(ctx, dense, matrix, transposed):
        ctx.matrices = (matrix, transposed)
        return _apply(matrix, dense)

    @staticmethod
    def backward(ctx, grad):
        matrix, transposed = ctx.matrices
        return _Product.apply(grad, transposed, matrix), None, None


def _product(dense: Tensor, matrix, transposed) -> Tensor:
    if torch.is_grad_enabled() and dense.requires_grad:
        return _Product.apply(dense, matrix, transposed)
    return _apply(matrix, dense)


class SparseDesign:
    """Sparse features, shared by the K folds (n, d) or one matrix per fold
    (K, n, d), as torch CSR tensors, with their transposes: torch CSR
    tensors, or scipy's transposed views ``X.T`` (CPU only).

    ``intercept`` adds a column of ones (never stored) to the products and
    the Gram matrices: the design of a model with an intercept.
    """

    def __init__(self, matrices, transposes, n_samples, n_features, intercept=False):
        self.matrices = tuple(matrices)
        self.transposes = tuple(transposes)
        self.n_samples = n_samples
        self.n_features = n_features
        self.intercept = intercept
        # Derived once and shared with the intercept's view of the design.
        self._derived = {}

    @property
    def shared(self) -> bool:
        return len(self.matrices) == 1

    @property
    def shape(self) -> tuple:
        columns = self.n_features + int(self.intercept)
        if self.shared:
            return (self.n_samples, columns)
        return (len(self.matrices), self.n_samples, columns)

    @property
    def dtype(self) -> torch.dtype:
        return self.matrices[0].values().dtype

    @property
    def device(self) -> torch.device:
        return self.matrices[0].device

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        """The multiply-adds of one product with one column: the stored
        entries (what sizes the work, as a dense tensor's entries do)."""
        return sum(int(X.values().numel()) for X in self.matrices)

    def float(self) -> "SparseDesign":
        """The same design in single precision, for the loose first products
        of the conjugate gradient and the preconditioner: the values cast
        (the indices shared), and a stored transpose in single precision
        where the design has only scipy's view (its products then run at
        torch's row-wise speed). Made once, shared with the intercept's view."""
        single = self._derived.get("single")
        if single is None:
            matrices, transposes = [], []
            for X, XT in zip(self.matrices, self.transposes):
                if isinstance(XT, Tensor):
                    matrices.append(_with_values(X, X.values().float()))
                    transposes.append(_with_values(XT, XT.values().float()))
                else:
                    values = XT.T.data.astype(np.float32)
                    X = sp.csr_matrix((values, XT.T.indices, XT.T.indptr), XT.T.shape)
                    matrices.append(to_sparse_tensor(X, dtype="float32"))
                    transposes.append(to_sparse_tensor(X.T.tocsr(), dtype="float32"))
            single = SparseDesign(matrices, transposes, self.n_samples, self.n_features)
            self._derived["single"] = single
        return single.with_intercept(self.intercept)

    def with_intercept(self, fit_intercept: bool) -> "SparseDesign":
        """The same features, with a column of ones when ``fit_intercept``."""
        if not fit_intercept:
            return self
        design = SparseDesign(
            self.matrices, self.transposes, self.n_samples, self.n_features, True
        )
        design._derived = self._derived
        return design

    def matmul(self, coef: Tensor) -> Tensor:
        """``X @ coef`` per fold, (K, n, c), from ``coef`` (K, D, c): the
        product in the design's precision, the result in ``coef``'s."""
        n_folds, _, n_outputs = coef.shape
        features = coef[:, : self.n_features]
        if self.shared:
            flat = _side_by_side(features, _precision(self.matrices[0], coef.dtype))
            scores = _product(flat, self.matrices[0], self.transposes[0])
            scores = _folds_first(scores, n_folds, coef.dtype)
        else:
            scores = torch.stack(
                [
                    _product(features[k].to(_precision(X, coef.dtype)), X, XT).to(
                        coef.dtype
                    )
                    for k, (X, XT) in enumerate(zip(self.matrices, self.transposes))
                ]
            )
        if self.intercept:
            scores = scores + coef[:, self.n_features, None, :]
        return scores

    def transposed_matmul(self, response: Tensor) -> Tensor:
        """``X^T @ response`` per fold, (K, D, c), from ``response`` (K, n, c):
        the product in the design's precision, the result in ``response``'s."""
        n_folds, _, n_outputs = response.shape
        if self.shared:
            precision = _precision(self.transposes[0], response.dtype)
            flat = _side_by_side(response, precision)
            product = _product(flat, self.transposes[0], self.matrices[0])
            product = _folds_first(product, n_folds, response.dtype)
        else:
            product = torch.stack(
                [
                    _product(response[k].to(_precision(XT, response.dtype)), XT, X).to(
                        response.dtype
                    )
                    for k, (X, XT) in enumerate(zip(self.matrices, self.transposes))
                ]
            )
        if self.intercept:
            product = torch.cat([product, response.sum(1, keepdim=True)], dim=1)
        return product

    def squared_transposed_matmul(self, weights: Tensor) -> Tensor:
        """``sum_i weights[k, i, a] x_ij^2`` per fold, (K, D, c): the diagonal
        of the weighted Gram matrices, without forming them."""
        squares = self._derived.get("squared")
        if squares is None:
            # In single precision: a preconditioner needs no more. Stored
            # transposes keep theirs; scipy's views square those of the
            # single-precision design for the call (8 MB for a few
            # milliseconds on the benchmark's X).
            stored = all(isinstance(XT, Tensor) for XT in self.transposes)
            source = self.transposes if stored else self.float().transposes
            squares = tuple(_with_values(XT, XT.values().float() ** 2) for XT in source)
            if stored:
                self._derived["squared"] = squares
        design = SparseDesign(
            self.matrices, squares, self.n_samples, self.n_features, False
        )
        diagonal = design.transposed_matmul(weights)
        if self.intercept:
            diagonal = torch.cat([diagonal, weights.sum(1, keepdim=True)], dim=1)
        return diagonal

    def grams(self, weights: Tensor) -> Tensor:
        """``sum_i weights[..., i] x_i x_i^T`` per fold (and output), with the
        intercept's column: (K, D, D) from weights (K, n), (K, c, D, D) from
        weights (K, n, c). Each is a sparse product ``X^T (diag(w) X)``."""
        per_output = weights.dim() == 3
        flat = weights.transpose(1, 2) if per_output else weights[:, None, :]
        n_folds, n_outputs, _ = flat.shape
        size = self.shape[-1]
        grams = flat.new_zeros(n_folds, n_outputs, size, size)
        for k in range(n_folds):
            X = self.matrices[0 if self.shared else k]
            XT = self.transposes[0 if self.shared else k]
            rows = _rows(X)
            for a in range(n_outputs):
                w = flat[k, a].to(self.dtype)
                scaled = _with_values(X, X.values() * w[rows])
                block = (XT @ scaled).to_dense()
                grams[k, a, : self.n_features, : self.n_features] = block
                if self.intercept:
                    column = XT @ w
                    grams[k, a, : self.n_features, -1] = column
                    grams[k, a, -1, : self.n_features] = column
                    grams[k, a, -1, -1] = w.sum()
        return grams if per_output else grams[:, 0]


def _precision(operand, dtype: torch.dtype) -> torch.dtype:
    """The precision of products with ``operand``: a torch CSR tensor's own;
    a scipy matrix takes numpy's promotion (``dtype`` is kept)."""
    return operand.values().dtype if isinstance(operand, Tensor) else dtype


def _side_by_side(stacked: Tensor, dtype: torch.dtype) -> Tensor:
    """The folds of (K, m, c) side by side, (m, K c), in ``dtype``: the
    operand of one product for every fold. One copy casts and lays out
    (a cast, then a copy to this layout, took 13% longer over a Hessian
    product on the 20,000 x 50,000 benchmark)."""
    n_folds, rows, n_outputs = stacked.shape
    flat = stacked.permute(1, 0, 2).to(dtype, memory_format=torch.contiguous_format)
    return flat.reshape(rows, n_folds * n_outputs)


def _folds_first(flat: Tensor, n_folds: int, dtype: torch.dtype) -> Tensor:
    """The inverse of :func:`_side_by_side`: (m, K c) as a contiguous
    (K, m, c) in ``dtype``, by one copy."""
    folds = flat.reshape(flat.shape[0], n_folds, -1).permute(1, 0, 2)
    return folds.to(dtype, memory_format=torch.contiguous_format)


def _with_values(X: Tensor, values: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(
            X.crow_indices(),
            X.col_indices(),
            values,
            size=X.shape,
            check_invariants=False,
        )


def _rows(X: Tensor) -> Tensor:
    """The row of each stored entry of a CSR tensor."""
    crow = X.crow_indices()
    counts = (crow[1:] - crow[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(X.shape[0], device=X.device), counts)


def sparse_features(features, *, device, dtype) -> SparseDesign | None:
    """The :class:`SparseDesign` of ``features`` (one CSR matrix, or one per
    fold), or None when any of them is dense."""
    matrices = features if isinstance(features, list) else [features]
    if not all(sp.issparse(X) for X in matrices):
        return None
    # The products with dense tensors take any order of the indices (and
    # add duplicates, as a product should); the sparse products of the Gram
    # matrices get canonical ones. A wide X is not copied to sort it.
    narrow = matrices[0].shape[1] <= SPARSE_GRAM_FEATURES
    matrices = [canonical_csr(X, narrow) for X in matrices]
    # A wide design on the CPU takes its transposed products from scipy's
    # view of X (no copy); the Gram matrices' sparse products, and other
    # devices, need a stored transpose.
    stored = narrow or resolve_device(device).type != "cpu"
    return SparseDesign(
        [to_sparse_tensor(X, device=device, dtype=dtype) for X in matrices],
        [
            to_sparse_tensor(X.T.tocsr(), device=device, dtype=dtype) if stored else X.T
            for X in matrices
        ],
        matrices[0].shape[0],
        matrices[0].shape[1],
    )


def matmul(X, coef: Tensor) -> Tensor:
    """``X @ coef`` per fold, (K, n, c), for a dense or sparse ``X``: the
    product in ``X``'s precision, the result in ``coef``'s."""
    if isinstance(X, SparseDesign):
        return X.matmul(coef)
    if X.dim() == 2:
        n_folds, _, n_outputs = coef.shape
        scores = X @ _side_by_side(coef, X.dtype)
        scores = scores.reshape(X.shape[0], n_folds, n_outputs).permute(1, 0, 2)
        return scores.to(coef.dtype)
    return (X @ coef.to(X.dtype)).to(coef.dtype)


def transposed_matmul(X, response: Tensor) -> Tensor:
    """``X^T @ response`` per fold, (K, d, c), for a dense or sparse ``X``:
    the product in ``X``'s precision, the result in ``response``'s."""
    if isinstance(X, SparseDesign):
        return X.transposed_matmul(response)
    if X.dim() == 2:
        n_folds, _, n_outputs = response.shape
        product = X.T @ _side_by_side(response, X.dtype)
        product = product.reshape(X.shape[1], n_folds, n_outputs).permute(1, 0, 2)
        return product.to(response.dtype)
    return (X.transpose(-1, -2) @ response.to(X.dtype)).to(response.dtype)
