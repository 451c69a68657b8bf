"""Built-in representations h_lambda: the paper's conv4 network and an MLP."""

import copy

import torch
from torch import nn


def conv4(in_channels=1, n_filters=64):
    """The four-block convolutional representation of the paper.

    Each block is a 3x3 convolution with ``n_filters`` filters and stride 2,
    batch normalization and a ReLU; the output is flattened. On 28x28 images
    (Omniglot, MNIST) it gives ``4 * n_filters`` = 256 features, the
    hyper-representation of Franceschi et al. (2018), after Vinyals et al.
    (2016) and Finn et al. (2017).

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels.
    n_filters : int, default=64
        Number of filters of every convolution.

    Returns
    -------
    network : torch.nn.Sequential
        Maps ``(n, in_channels, H, W)`` tensors to ``(n, n_features)``.

    References
    ----------
    .. [1] L. Franceschi, P. Frasconi, S. Salzo, R. Grazzi and M. Pontil,
       "Bilevel Programming for Hyperparameter Optimization and
       Meta-Learning", ICML 2018.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.meta import conv4
    >>> conv4()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 256])
    """
    layers = []
    for block in range(4):
        layers += [
            nn.Conv2d(in_channels if block == 0 else n_filters, n_filters, 3, 2, 1),
            nn.BatchNorm2d(n_filters),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers, nn.Flatten())


def mlp(n_features_in, hidden_layer_sizes=(64, 64)):
    """A multilayer perceptron representation for tabular data.

    Each hidden layer is linear, batch-normalized and followed by a ReLU.

    Parameters
    ----------
    n_features_in : int
        Number of input features.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Widths of the hidden layers; the last one is the number of features
        of the representation.

    Returns
    -------
    network : torch.nn.Sequential
        Maps ``(n, n_features_in)`` tensors to ``(n, hidden_layer_sizes[-1])``.

    Examples
    --------
    >>> import torch
    >>> from skbilevel.meta import mlp
    >>> mlp(10, (32, 16))(torch.zeros(3, 10)).shape
    torch.Size([3, 16])
    """
    layers, width = [], n_features_in
    for size in hidden_layer_sizes:
        layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers)


def build_representation(representation, sample_shape):
    """A fresh network for ``representation`` and inputs of ``sample_shape``.

    ``"auto"`` is conv4 for images and the MLP for tabular data; a user
    module is deep-copied so that fitting never changes the estimator's
    parameters.
    """
    if isinstance(representation, nn.Module):
        return copy.deepcopy(representation)
    if representation == "auto":
        representation = "mlp" if len(sample_shape) == 1 else "conv4"
    if representation == "conv4":
        if len(sample_shape) != 3:
            raise ValueError(
                "representation='conv4' needs images of shape (n_samples, H, W) or "
                f"(n_samples, C, H, W); got samples of shape {sample_shape}."
            )
        return conv4(in_channels=sample_shape[0])
    if len(sample_shape) != 1:
        raise ValueError(
            "representation='mlp' needs tabular data of shape (n_samples, "
            f"n_features); got samples of shape {sample_shape}."
        )
    return mlp(sample_shape[0])


def n_output_features(network, sample_shape, device, dtype):
    """Width of the representation, measured by one forward pass in eval mode."""
    training = network.training
    network.eval()
    with torch.no_grad():
        out = network(torch.zeros((2, *sample_shape), device=device, dtype=dtype))
    network.train(training)
    if out.ndim != 2:
        raise ValueError(
            "The representation must map a batch to a 2D tensor (n_samples, "
            f"n_features); it returned a tensor of shape {tuple(out.shape)}."
        )
    return out.shape[1]
