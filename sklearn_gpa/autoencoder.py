"""Autoencoder: a small torch autoencoder as a scikit-learn transformer (paper 001, F.2)."""

from __future__ import annotations

import contextlib
import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._engine.device import resolve_device, threads_context
from ._engine.optim import adam_step
from .utils import check_image_shape, check_sizes

__all__ = ["Autoencoder"]

# Rows per forward pass in ``transform`` / ``inverse_transform``.  A few hundred rows keep
# the work per pass under ``threads_context``'s one-thread threshold for these small
# networks: 1 797 digits encoded in one pass on two threads of a busy 2-core machine took
# 10x longer than in batches of 256 on one.
_PREDICT_BATCH = 256


def _dense_stack(sizes) -> list[torch.nn.Module]:
    """Linear layers through ``sizes`` with ReLU between them (none after the last)."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    return layers[:-1]


def _halved(size: int, times: int) -> list[int]:
    """Spatial sizes after each stride-2, padding-1, 3x3 convolution: ``ceil(size / 2)``."""
    sizes = [size]
    for _ in range(times):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _conv_modules(image_shape, channels, hidden, n_components):
    """Stride-2 3x3 convolutions, then dense layers; the decoder mirrors it exactly.

    Transposed convolutions get the output padding that restores each encoder size, so any
    height and width work (8 -> 4 -> 2 -> 4 -> 8, 28 -> 14 -> 7 -> 14 -> 28, 5 -> 3 -> 2 ...).
    """
    n_channels, height, width = image_shape
    heights, widths = _halved(height, len(channels)), _halved(width, len(channels))
    flat = channels[-1] * heights[-1] * widths[-1]
    encoder = [torch.nn.Unflatten(1, image_shape)]
    for c_in, c_out in zip((n_channels, *channels[:-1]), channels):
        encoder += [torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), torch.nn.ReLU()]
    encoder += [torch.nn.Flatten(), *_dense_stack((flat, *hidden, n_components))]
    decoder = [*_dense_stack((n_components, *hidden[::-1], flat)), torch.nn.ReLU()]
    decoder.append(torch.nn.Unflatten(1, (channels[-1], heights[-1], widths[-1])))
    c_outs = (*channels[::-1][1:], n_channels)
    for i, (c_in, c_out) in enumerate(zip(channels[::-1], c_outs)):
        level = len(channels) - 1 - i
        padding = (
            heights[level] - 2 * heights[level + 1] + 1,
            widths[level] - 2 * widths[level + 1] + 1,
        )
        decoder += [
            torch.nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=padding),
            torch.nn.ReLU(),
        ]
    return encoder, [*decoder[:-1], torch.nn.Flatten()]


def _initialize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """He-uniform weights and zero biases, drawn from ``generator`` only (no global RNG)."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear | torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            torch.nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu", generator=generator)
            torch.nn.init.zeros_(layer.bias)


class _Adam:
    """Adam with an L2 penalty over a module's parameters, clearing the gradients after."""

    def __init__(self, parameters, learning_rate: float, weight_decay: float):
        self.parameters = list(parameters)
        self.exp_avg = [torch.zeros_like(p) for p in self.parameters]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.parameters]
        self.steps = [torch.zeros((), device=p.device) for p in self.parameters]
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def step(self) -> None:
        grads = [p.grad for p in self.parameters]
        adam_step(
            self.parameters,
            grads,
            self.exp_avg,
            self.exp_avg_sq,
            self.steps,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
        )
        # None, not zeros: the next backward pass then hands each gradient over as computed
        # instead of adding it to a zero tensor (one pass less over every parameter).
        for parameter in self.parameters:
            parameter.grad = None


def _train_step(encoder, decoder, optimizer, rows, dtype=None):
    """One Adam step on the mean squared reconstruction error of ``rows``; the loss (a tensor).

    ``dtype`` (``torch.bfloat16``): the forward pass and the loss under ``torch.autocast`` in
    that type (the weights, their gradients and Adam stay float32); None: float32 throughout.
    """
    with torch.autocast(rows.device.type, dtype=dtype or torch.bfloat16, enabled=bool(dtype)):
        loss = torch.nn.functional.mse_loss(decoder(encoder(rows)), rows)
    loss.backward()
    optimizer.step()
    return loss.detach()


@contextlib.contextmanager
def _training_layout(*modules):
    """Train convolutions on the CPU with channels-last (NHWC) weights, then restore them.

    oneDNN runs these small stride-2 convolutions and their transposes about twice as fast
    on NHWC feature maps (``benchmarks/bench_images.py``); a convolution whose weight is
    channels-last makes its output channels-last, so the maps follow without a change to the
    modules.  The weights go back to the contiguous format after training, so the fitted
    modules are as before.  Dense networks and other devices are left alone.
    """
    convolutional = [
        module
        for module in modules
        if next(module.parameters()).device.type == "cpu"
        and any(isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d) for m in module.modules())
    ]
    for module in convolutional:
        module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for module in convolutional:
            module.to(memory_format=torch.contiguous_format)


class Autoencoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A small torch autoencoder: ``transform`` encodes, ``inverse_transform`` decodes.

    The encoder and decoder are trained together with Adam on the mean squared
    reconstruction error.  Without ``image_shape`` they are dense ReLU networks through
    ``hidden_layer_sizes`` (the decoder mirrors the encoder); with it, each row is reshaped
    to an image and the encoder starts with stride-2 3x3 convolutions through
    ``conv_channels``, mirrored by transposed convolutions in the decoder, as the
    convolutional autoencoders of paper 001 (section F.2).  The code layer is linear.

    Use it as the encoder of :class:`~sklearn_gpa.LatentGPA` to run the particle flow in
    its latent space, as the papers do for images (paper 001, Algorithm 2 and Table 6).

    Inputs are rescaled before training, and outputs mapped back, by one affine map:

    * ``output_activation="sigmoid"``: ``(X - min) / (max - min)`` with the minimum and
      maximum over all training values, so images keep one intensity scale and the decoder
      returns values in the training range ``(data_min_, data_max_)``;
    * ``output_activation="linear"``: every feature centred on its mean and all divided by
      one common scale (the root mean variance), so the loss weighs features as ``X`` does.

    Parameters
    ----------
    n_components : int, default=16
        Dimension of the code (latent space).
    hidden_layer_sizes : array-like of int, default=(256, 128)
        Widths of the dense encoder layers before the code (after the convolutions when
        ``image_shape`` is given); the decoder uses them in reverse order.
    image_shape : tuple of int or None, default=None
        ``(height, width)`` or ``(channels, height, width)``: rows are images flattened in
        C order (``X.reshape(-1, *image_shape)``) and a convolutional autoencoder is used.
        None: a dense autoencoder.
    conv_channels : array-like of int, default=(32, 64)
        Channels of the stride-2 convolutions (only used with ``image_shape``); each halves
        the height and width.
    output_activation : {"auto", "sigmoid", "linear"}, default="auto"
        Last decoder layer.  "auto" is "sigmoid" with ``image_shape`` (bounded intensities)
        and "linear" without.
    max_iter : int, default=50
        Number of epochs (passes over the training rows).
    batch_size : int, default=128
        Rows per Adam step (all rows when fewer).
    learning_rate : float, default=1e-3
        Adam step size.
    weight_decay : float, default=0.0
        Adam L2 penalty on the weights.
    train_dtype : {"float32", "bfloat16"}, default="float32"
        Arithmetic of the training passes.  "bfloat16": the forward and backward passes run
        under ``torch.autocast`` in bfloat16, while the weights, their gradients, Adam and
        the loss stay float32.  Worth it on CPUs with bfloat16 matrix units (Intel AMX) and
        on GPUs that have them, where steps are faster at a reconstruction error close to
        float32's (measured in ``benchmarks/README.md``, "The image path"); on other CPUs it
        can be slower.  Results differ from float32's beyond rounding.  Encoding and
        decoding are float32 either way.
    device : str, default="cpu"
        Torch device for training and encoding/decoding ("cpu", "cuda", "auto").  The
        fitted networks are kept on the CPU, so the estimator pickles anywhere.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation and batch shuffling; an int gives the same networks on
        every fit (on the same device and torch version).
    verbose : int, default=0
        Print the loss after every epoch when > 0.

    Attributes
    ----------
    encoder_ : torch.nn.Sequential
        Maps rescaled rows to codes (on the CPU, in eval mode).
    decoder_ : torch.nn.Sequential
        Maps codes to rescaled rows.
    loss_curve_ : list of float
        Mean squared reconstruction error per feature of each epoch, in the units of ``X``
        (compare with ``X.var(axis=0).mean()``).
    n_iter_ : int
        Number of epochs run.
    offset_ : ndarray of shape (n_features,)
        Subtracted from each row before encoding.
    scale_ : float
        Divides the centred rows before encoding.
    data_min_, data_max_ : float
        Smallest and largest training value.
    output_activation_ : str
        The resolved output activation.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during ``fit``, when ``X`` has string column names.

    See Also
    --------
    sklearn_gpa.LatentGPA : The particle flow in the latent space of an encoder.
    sklearn.decomposition.PCA : The linear encoder the papers use for gene expression.
    sklearn.neural_network.MLPRegressor : Dense networks trained on squared error.

    Notes
    -----
    The networks are trained in float32.  ``transform`` and ``inverse_transform`` return
    float32 for float32 input and float64 otherwise.  In float32 a row's code depends in its
    last bits on how many rows share its batch (the matrix-product kernels differ), so a
    dense network on the CPU encodes and decodes float64 input with float64 copies of its
    weights, which makes each row's result independent of the others to about 1e-15;
    convolutional networks and GPUs compute in float32.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_gpa import Autoencoder
    >>> X = load_digits().data / 16
    >>> ae = Autoencoder(n_components=8, image_shape=(8, 8), max_iter=5, random_state=0)
    >>> codes = ae.fit_transform(X)
    >>> codes.shape
    (1797, 8)
    >>> ae.inverse_transform(codes).shape
    (1797, 64)
    >>> ae.loss_curve_[-1] < ae.loss_curve_[0]
    True
    >>> ae.get_feature_names_out()[:2].tolist()
    ['autoencoder0', 'autoencoder1']
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "image_shape": ["array-like", None],
        "conv_channels": ["array-like", Interval(Integral, 1, None, closed="left")],
        "output_activation": [StrOptions({"auto", "sigmoid", "linear"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "train_dtype": [StrOptions({"float32", "bfloat16"})],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_components: int = 16,
        *,
        hidden_layer_sizes=(256, 128),
        image_shape=None,
        conv_channels=(32, 64),
        output_activation: str = "auto",
        max_iter: int = 50,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        train_dtype: str = "float32",
        device: str = "cpu",
        random_state=None,
        verbose: int = 0,
    ):
        self.n_components = n_components
        self.hidden_layer_sizes = hidden_layer_sizes
        self.image_shape = image_shape
        self.conv_channels = conv_channels
        self.output_activation = output_activation
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.train_dtype = train_dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @property
    def _n_features_out(self):
        return self.n_components

    # ----------------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the encoder and decoder on the rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows (flattened images when ``image_shape`` is given).
        y : None
            Ignored.

        Returns
        -------
        self : Autoencoder
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        hidden = check_sizes(self.hidden_layer_sizes, "hidden_layer_sizes")
        self.output_activation_ = self.output_activation
        if self.output_activation == "auto":
            self.output_activation_ = "linear" if self.image_shape is None else "sigmoid"
        encoder, decoder = self._build(X.shape[1], hidden)
        self._fit_scaling(X)
        device = resolve_device(self.device)
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        generator = torch.Generator().manual_seed(int(seed))
        _initialize(encoder, generator)
        _initialize(decoder, generator)
        # The dense widths are what ``threads_context`` sizes the work by.
        self._layer_sizes_ = (X.shape[1], *hidden, self.n_components, *hidden[::-1], X.shape[1])
        with threads_context(device, min(self.batch_size, len(X)), self._layer_sizes_):
            self.loss_curve_ = self._train(encoder.to(device), decoder.to(device), X, generator)
        self.encoder_ = encoder.cpu().eval()
        self.decoder_ = decoder.cpu().eval()
        self.n_iter_ = len(self.loss_curve_)
        return self

    def _build(self, n_features, hidden):
        if self.image_shape is None:
            encoder = _dense_stack((n_features, *hidden, self.n_components))
            decoder = _dense_stack((self.n_components, *hidden[::-1], n_features))
        else:
            shape = check_image_shape(self.image_shape, n_features)
            channels = check_sizes(self.conv_channels, "conv_channels", minimum=1)
            encoder, decoder = _conv_modules(shape, channels, hidden, self.n_components)
        if self.output_activation_ == "sigmoid":
            decoder.append(torch.nn.Sigmoid())
        return torch.nn.Sequential(*encoder), torch.nn.Sequential(*decoder)

    def _fit_scaling(self, X):
        self.data_min_, self.data_max_ = float(X.min()), float(X.max())
        if self.output_activation_ == "sigmoid":
            self.offset_ = np.full(X.shape[1], self.data_min_)
            spread = self.data_max_ - self.data_min_
        else:
            self.offset_ = X.mean(axis=0, dtype=np.float64)
            spread = float(np.sqrt(X.var(axis=0, dtype=np.float64).mean()))
        # Constant data: any positive scale reconstructs it exactly.
        self.scale_ = spread if spread > 0 else 1.0

    def _train(self, encoder, decoder, X, generator):
        device = next(encoder.parameters()).device
        data = torch.as_tensor(self._scaled(X).astype(np.float32, copy=False), device=device)
        batch_size = min(self.batch_size, len(X))
        dtype = torch.bfloat16 if self.train_dtype == "bfloat16" else None
        loss_curve = []
        with _training_layout(encoder, decoder):
            optimizer = _Adam(
                [*encoder.parameters(), *decoder.parameters()],
                self.learning_rate,
                self.weight_decay,
            )
            for epoch in range(self.max_iter):
                order = torch.randperm(len(X), generator=generator).to(device)
                total = torch.zeros((), device=device)
                for batch in torch.split(order, batch_size):
                    loss = _train_step(encoder, decoder, optimizer, data[batch], dtype)
                    total += loss * len(batch)
                loss_curve.append(float(total) / len(X) * self.scale_**2)
                if self.verbose > 0:
                    print(
                        f"Autoencoder epoch {epoch + 1}/{self.max_iter}: loss {loss_curve[-1]:.6g}"
                    )
        return loss_curve

    def _scaled(self, X):
        return ((X - self.offset_) / self.scale_).astype(X.dtype, copy=False)

    # ------------------------------------------------------------------- encode/decode
    def transform(self, X):
        """Encode rows into codes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        codes : ndarray of shape (n_samples, n_components)
        """
        check_is_fitted(self, "encoder_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._apply(self.encoder_, self._scaled(X)).astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        """Decode codes into rows in the space of the training data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Codes, as returned by :meth:`transform`.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "decoder_")
        codes = check_array(X, dtype=[np.float64, np.float32], input_name="X")
        if codes.shape[1] != self.n_components:
            raise ValueError(
                f"X has {codes.shape[1]} features, but {type(self).__name__}.inverse_transform "
                f"is expecting {self.n_components} (n_components) features as input."
            )
        decoded = self._apply(self.decoder_, codes)
        return (decoded * self.scale_ + self.offset_).astype(codes.dtype, copy=False)

    def _apply(self, module, rows: np.ndarray) -> np.ndarray:
        """``module`` on ``rows``, in batches, on ``device``, without autograd: float64 rows of
        a dense network on the CPU with a float64 copy of the weights, anything else in
        float32 (float64 convolutions are much slower on the CPU, GPUs are slow in float64 or
        lack it)."""
        device = resolve_device(self.device)
        exact = rows.dtype == np.float64 and device.type == "cpu" and self.image_shape is None
        if not exact:
            rows = rows.astype(np.float32, copy=False)
        if device.type != "cpu" or exact:
            dtype = torch.float64 if exact else torch.float32
            module = copy.deepcopy(module).to(device=device, dtype=dtype)
        outputs = []
        with (
            torch.inference_mode(),
            threads_context(device, min(len(rows), _PREDICT_BATCH), self._layer_sizes_),
        ):
            for start in range(0, len(rows), _PREDICT_BATCH):
                batch = torch.as_tensor(rows[start : start + _PREDICT_BATCH], device=device)
                outputs.append(module(batch).cpu().numpy())
        return np.concatenate(outputs)
