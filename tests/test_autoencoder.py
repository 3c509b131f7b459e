"""Autoencoder: the torch autoencoder transformer, alone and as LatentGPA's encoder."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from sklearn_gpa import Autoencoder, GPATransporter, LatentGPA


@pytest.fixture(scope="module")
def digits():
    return load_digits().data / 16


def _mse(model, X):
    return float(np.mean((model.inverse_transform(model.transform(X)) - X) ** 2))


@pytest.fixture(scope="module", params=[None, (8, 8)], ids=["dense", "conv"])
def fitted(request, digits):
    model = Autoencoder(
        n_components=8,
        image_shape=request.param,
        output_activation="sigmoid",
        max_iter=20,
        learning_rate=3e-3,
        random_state=0,
    )
    return model.fit(digits)


def test_reconstruction_beats_pca_on_digits(fitted, digits):
    pca = PCA(n_components=8).fit(digits)
    pca_mse = float(np.mean((pca.inverse_transform(pca.transform(digits)) - digits) ** 2))
    mse = _mse(fitted, digits)
    assert mse < 0.25 * digits.var(axis=0).mean()
    assert mse < pca_mse
    assert fitted.loss_curve_[-1] == pytest.approx(mse, rel=0.2)


def test_more_epochs_reduce_the_loss(fitted, digits):
    curve = np.asarray(fitted.loss_curve_)
    assert fitted.n_iter_ == len(curve) == 20
    assert curve[-1] < 0.5 * curve[0]
    assert np.all(curve[5:] < curve[0])
    short = Autoencoder(**{**fitted.get_params(), "max_iter": 2}).fit(digits)
    assert _mse(fitted, digits) < _mse(short, digits)


def test_sigmoid_output_stays_in_the_training_range(fitted, digits):
    decoded = fitted.inverse_transform(10 * fitted.transform(digits))
    assert decoded.min() >= fitted.data_min_ and decoded.max() <= fitted.data_max_


@pytest.mark.parametrize("image_shape, expected", [(None, "linear"), ((2, 3), "sigmoid")])
def test_output_activation_auto_follows_image_shape(image_shape, expected):
    X = np.random.RandomState(0).uniform(size=(10, 6))
    model = Autoencoder(image_shape=image_shape, max_iter=1, random_state=0).fit(X)
    assert model.output_activation_ == expected


@pytest.mark.parametrize("image_shape", [(3, 5, 7), (1, 9, 4), (6, 6)])
def test_convolutions_restore_any_image_size(image_shape):
    X = np.random.RandomState(0).uniform(size=(20, int(np.prod(image_shape))))
    model = Autoencoder(n_components=3, image_shape=image_shape, max_iter=2, random_state=0)
    codes = model.fit_transform(X)
    assert codes.shape == (20, 3)
    assert model.inverse_transform(codes).shape == X.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_shapes_dtypes_and_feature_names(dtype):
    X = (np.random.RandomState(0).uniform(size=(30, 6)) * 10).astype(dtype)
    model = Autoencoder(n_components=3, max_iter=2, random_state=0).fit(X)
    codes = model.transform(X)
    expected = np.float32 if dtype == np.float32 else np.float64
    assert codes.shape == (30, 3) and codes.dtype == expected
    decoded = model.inverse_transform(codes)
    assert decoded.shape == (30, 6) and decoded.dtype == expected
    names = model.get_feature_names_out().tolist()
    assert names == ["autoencoder0", "autoencoder1", "autoencoder2"]


def test_float64_rows_encode_the_same_alone_or_in_a_batch(fitted, digits):
    """float64 input of a dense network is encoded and decoded with float64 copies of the
    weights: a row's code does not depend on the rows that share its batch (in float32 the
    matrix-product kernels for 1 and for 200 rows round differently, by up to 2e-7 on an
    AVX-512 Xeon, which sklearn's subset-invariance check refused).  float32 input stays
    float32 and agrees with it to float32 precision."""
    X = digits[:200]
    # Convolutions stay in float32 (float64 ones are slow on the CPU): float32 agreement.
    atol = 1e-12 if fitted.image_shape is None else 1e-5
    codes = fitted.transform(X)
    alone = np.vstack([fitted.transform(X[i : i + 1]) for i in range(0, 200, 37)])
    np.testing.assert_allclose(alone, codes[::37], rtol=0, atol=atol)
    decoded = fitted.inverse_transform(codes)
    decoded_alone = np.vstack(
        [fitted.inverse_transform(codes[i : i + 1]) for i in range(0, 200, 37)]
    )
    np.testing.assert_allclose(decoded_alone, decoded[::37], rtol=0, atol=atol)
    codes32 = fitted.transform(X.astype(np.float32))
    assert codes32.dtype == np.float32
    np.testing.assert_allclose(codes32, codes, rtol=1e-4, atol=1e-4)
    assert next(fitted.encoder_.parameters()).dtype == torch.float32  # the model is untouched


def test_fixed_random_state_is_deterministic_and_inputs_untouched():
    X = np.random.RandomState(0).normal(size=(40, 5))
    before = X.copy()
    first = Autoencoder(n_components=2, max_iter=3, random_state=7).fit(X)
    second = Autoencoder(n_components=2, max_iter=3, random_state=7).fit(X)
    other = Autoencoder(n_components=2, max_iter=3, random_state=8).fit(X)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))
    assert first.loss_curve_ == second.loss_curve_
    assert not np.allclose(first.transform(X), other.transform(X))
    np.testing.assert_array_equal(X, before)


def test_torch_threads_are_restored():
    threads = torch.get_num_threads()
    X = np.random.RandomState(0).normal(size=(40, 5))
    Autoencoder(n_components=2, max_iter=2, random_state=0).fit(X).transform(X)
    assert torch.get_num_threads() == threads


def test_pickle_round_trip_gives_identical_outputs(fitted, digits):
    restored = pickle.loads(pickle.dumps(fitted))
    codes = fitted.transform(digits)
    np.testing.assert_array_equal(restored.transform(digits), codes)
    np.testing.assert_array_equal(
        restored.inverse_transform(codes), fitted.inverse_transform(codes)
    )


def test_constant_data_is_reconstructed():
    X = np.full((10, 4), 3.0)
    model = Autoencoder(n_components=2, max_iter=20, random_state=0).fit(X)
    np.testing.assert_allclose(model.inverse_transform(model.transform(X)), X, atol=1e-2)


@pytest.mark.parametrize(
    "params, X, message",
    [
        ({"image_shape": (8, 7)}, np.zeros((5, 64)), "holds 56 values per image"),
        ({"image_shape": (2, 2, 2, 8)}, np.zeros((5, 64)), "image_shape must be"),
        ({"image_shape": (8, 8), "conv_channels": ()}, np.zeros((5, 64)), "conv_channels"),
        ({"hidden_layer_sizes": (4, 0)}, np.zeros((5, 3)), "hidden_layer_sizes"),
        ({}, np.array([[0.0, np.nan], [1.0, 2.0]]), "Input X contains NaN"),
        ({"n_components": 0}, np.zeros((5, 3)), "'n_components' parameter"),
        ({"output_activation": "tanh"}, np.zeros((5, 3)), "'output_activation' parameter"),
        ({"train_dtype": "float16"}, np.zeros((5, 3)), "'train_dtype' parameter"),
    ],
)
def test_bad_fit_input_raises_clear_errors(params, X, message):
    with pytest.raises(ValueError, match=message):
        Autoencoder(max_iter=1, **params).fit(X)


def test_bad_transform_input_raises_clear_errors():
    X = np.random.RandomState(0).normal(size=(20, 5))
    model = Autoencoder(n_components=2, max_iter=1, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 4 features, but Autoencoder is expecting 5"):
        model.transform(X[:, :4])
    with pytest.raises(ValueError, match=r"is expecting 2 \(n_components\) features"):
        model.inverse_transform(X)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        model.inverse_transform(np.array([[np.inf, 0.0]]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_device_is_a_value_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        Autoencoder(device="cuda", max_iter=1).fit(np.zeros((5, 3)))


def test_latent_gpa_generates_digits_with_the_autoencoder(digits):
    X = digits[:300]
    encoder = Autoencoder(n_components=8, image_shape=(8, 8), max_iter=10, random_state=0)
    model = LatentGPA(
        encoder=encoder,
        transporter=GPATransporter(n_steps=30, random_state=0, out_of_sample="auto"),
    )
    moved = model.fit_transform(X)
    assert moved.shape == X.shape and np.all(np.isfinite(moved))
    samples = model.sample(25, random_state=0)
    assert samples.shape == (25, 64) and np.all(np.isfinite(samples))
    assert model.n_components_ == 8
    assert np.isfinite(model.decoder_lipschitz_) and model.decoder_lipschitz_ > 0
    assert model.reconstruction_error_ < 0.8


def test_training_layout_is_channels_last_for_convolutions_and_restored_after():
    from sklearn_gpa.autoencoder import _training_layout

    estimator = Autoencoder(image_shape=(8, 8))
    estimator.output_activation_ = "sigmoid"
    encoder, decoder = estimator._build(64, (16,))
    dense = Autoencoder()
    dense.output_activation_ = "linear"
    dense_encoder, _ = dense._build(64, (16,))
    convolutions = [m.weight for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    parameters = list(encoder.parameters())
    with _training_layout(encoder, decoder, dense_encoder):
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
        # The same parameter objects (an optimiser made inside keeps them).
        assert list(encoder.parameters()) == parameters
        out = decoder(encoder(torch.rand(5, 64)))
        assert out.shape == (5, 64)
        assert all(p.is_contiguous() for p in dense_encoder.parameters())
    assert all(p.is_contiguous() for p in [*encoder.parameters(), *decoder.parameters()])


def test_channels_last_training_matches_contiguous_training():
    """Ten Adam steps in either layout reach the same weights up to float32 rounding."""
    import contextlib

    from sklearn_gpa.autoencoder import _Adam, _initialize, _train_step, _training_layout

    estimator = Autoencoder(image_shape=(8, 8), conv_channels=(4, 8))
    estimator.output_activation_ = "sigmoid"
    rows = torch.rand(32, 64, generator=torch.Generator().manual_seed(1))
    results = []

    def contiguous(*modules):
        return contextlib.nullcontext()

    for layout in (contiguous, _training_layout):
        encoder, decoder = estimator._build(64, (16,))
        generator = torch.Generator().manual_seed(0)
        _initialize(encoder, generator)
        _initialize(decoder, generator)
        with layout(encoder, decoder):
            optimizer = _Adam([*encoder.parameters(), *decoder.parameters()], 1e-2, 0.0)
            losses = [float(_train_step(encoder, decoder, optimizer, rows)) for _ in range(10)]
            assert all(p.grad is None for p in optimizer.parameters)
        results.append((losses, torch.cat([p.detach().flatten() for p in encoder.parameters()])))
    (old_losses, old_weights), (new_losses, new_weights) = results
    assert new_losses[-1] < new_losses[0]
    np.testing.assert_allclose(new_losses, old_losses, rtol=1e-4)
    torch.testing.assert_close(new_weights, old_weights, rtol=1e-3, atol=1e-4)


def test_bfloat16_training_runs_the_convolutions_in_bfloat16_and_reconstructs_as_well(digits):
    """``train_dtype="bfloat16"``: convolutions and dense layers compute in bfloat16 while
    training (float32 weights and codes), and the loss stays within a few per cent of
    float32's."""
    X = digits[:400]
    seen = set()
    fits = {}
    for train_dtype in ("float32", "bfloat16"):
        ae = Autoencoder(
            8, image_shape=(8, 8), max_iter=15, random_state=0, train_dtype=train_dtype
        )
        original = ae._build

        def build(*args, original=original):
            encoder, decoder = original(*args)
            encoder[1].register_forward_hook(lambda m, i, out: seen.add(out.dtype))
            return encoder, decoder

        ae._build = build
        codes = ae.fit_transform(X)
        fits[train_dtype] = ae
        assert codes.dtype == X.dtype
        assert all(p.dtype == torch.float32 for p in ae.encoder_.parameters())
    assert seen == {torch.float32, torch.bfloat16}
    curves = {name: np.asarray(ae.loss_curve_) for name, ae in fits.items()}
    assert curves["bfloat16"][-1] < 0.5 * curves["bfloat16"][0]
    np.testing.assert_allclose(curves["bfloat16"][-1], curves["float32"][-1], rtol=0.1)
