"""LatentGPA and the mean/std baseline."""

import warnings

import numpy as np
import pytest
from sklearn import config_context
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import GPATransporter, LatentGPA, MeanStdAdjuster
from sklearn_gpa._sample_levels import SampleLevels
from sklearn_gpa.baselines import meanstd_map
from sklearn_gpa.latent import decoder_lipschitz_constant, default_encoder
from sklearn_gpa.metrics import energy_distance
from sklearn_gpa.utils import stack_domains


def _low_rank_batch_pair(n=120, d=60, rank=4, seed=0):
    """Two classes on a low-rank manifold; the source has a per-gene shift and scale."""
    rng = np.random.RandomState(seed)
    basis = rng.normal(size=(rank, d))
    class_means = np.array([[2.0, 0, 0, 0], [-2.0, 1.0, 0, 0]])[:, :rank]

    def study(n_rows):
        y = rng.randint(0, 2, n_rows)
        latent = class_means[y] + rng.normal(size=(n_rows, rank))
        return latent @ basis + 0.2 * rng.normal(size=(n_rows, d)), y

    Xs, ys = study(n)
    Xt, yt = study(n)
    Xs = Xs * rng.uniform(0.7, 1.4, d) + rng.normal(0, 1.5, d)
    return Xs, ys, Xt, yt


def test_papers_encoder_keeps_ninety_percent_and_reports_floor():
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    model = LatentGPA(
        default_encoder(0.9),
        transporter=GPATransporter(n_steps=20, random_state=0, out_of_sample="auto"),
    ).fit(X, y, sample_domain=sd)
    pca = model.encoder_[-1]
    assert pca.explained_variance_ratio_.sum() >= 0.9
    assert model.n_components_ == pca.n_components_
    aligned = model.adjuster_.transform(X, sample_domain=sd)
    recon = model.encoder_.inverse_transform(model.encoder_.transform(aligned))
    expected = np.sqrt(((aligned - recon) ** 2).sum() / ((aligned - aligned.mean(0)) ** 2).sum())
    assert model.reconstruction_error_ == pytest.approx(expected)


def _factor_pair(rank, seed=0, n=120, d=60):
    """Two halves of one population; the source gets a per-gene affine effect and, with
    ``rank`` > 0, per-sample factors with gene loadings (the truth is known)."""
    rng = np.random.RandomState(seed)
    truth = rng.normal(size=(2 * n, 5)) @ rng.normal(size=(5, d)) + rng.normal(size=(2 * n, d))
    source, target = truth[:n], truth[n:]
    distorted = source * rng.uniform(0.7, 1.4, d) + rng.normal(0, 1.5, d)
    if rank:
        loadings = 3.0 * rng.normal(size=(rank, d))
        distorted = distorted + rng.normal(size=(n, rank)) @ loadings
    return distorted, source, target


def _recovery(corrected, distorted, truth):
    return np.sqrt(((corrected - truth) ** 2).mean() / ((distorted - truth) ** 2).mean())


def test_default_integration_moves_only_where_the_sides_differ():
    # A per-gene affine effect: no direction passes the permutation test, no flow runs,
    # and the result is the (shrunk) mean/std adjustment itself.
    distorted, truth, target = _factor_pair(rank=0)
    X, _, sd = stack_domains(distorted, target)
    model = LatentGPA().fit(X, sample_domain=sd)
    assert model.n_components_ == 0 and model.transporter_ is None
    meanstd = MeanStdAdjuster(conditional=False, shrink=True).fit(X, sample_domain=sd)
    np.testing.assert_allclose(model.transform(distorted), meanstd.transform(distorted))
    # Per-sample factors: the flow runs in the few directions they span, and recovers each
    # row's truth better than the per-gene adjustment.
    distorted, truth, target = _factor_pair(rank=2)
    X, _, sd = stack_domains(distorted, target)
    model = LatentGPA(
        transporter=GPATransporter(n_steps=1000, out_of_sample="auto", random_state=0)
    )
    corrected = model.fit_transform(X, sample_domain=sd)[sd >= 0]
    assert 1 <= model.n_components_ <= 10
    baseline = MeanStdAdjuster(conditional=False).fit_transform(X, sample_domain=sd)[sd >= 0]
    assert _recovery(corrected, distorted, truth) < 0.9 * _recovery(baseline, distorted, truth)


def _affine_pair(n, d, seed=0):
    """Source and target of n rows: per-feature scales and shifts drawn from a common law."""
    rng = np.random.RandomState(seed)
    truth_s, truth_t = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    scale, shift = rng.lognormal(0.3, 0.1, d), rng.normal(1.0, 0.2, d)
    return truth_s, truth_s * scale + shift, truth_t


def test_shrunk_meanstd_recovers_rows_better_with_few_rows_and_many_features():
    truth, distorted, target = _affine_pair(n=20, d=300)
    errors = {}
    for shrink in (False, True):
        a, b = meanstd_map(distorted, target, shrink=shrink)
        errors[shrink] = _recovery(distorted * a + b, distorted, truth)
    # The exact map copies each feature's sampling noise; pooling over 300 features
    # removes most of it.
    assert errors[True] < 0.8 * errors[False]
    # One feature with a real effect far outside the common law keeps it.
    distorted[:, 0] = truth[:, 0] * 0.2 + 8.0
    a, b = meanstd_map(distorted, target, shrink=True)
    assert abs((distorted[:, 0] * a[0] + b[0]).mean() - target[:, 0].mean()) < 0.4
    assert (distorted[:, 0] * a[0]).std() == pytest.approx(target[:, 0].std(), rel=0.25)


def test_shrunk_meanstd_moves_a_feature_at_most_a_target_std_for_one_extreme_row():
    truth, distorted, target = _affine_pair(n=100, d=30)
    distorted[0, 0] = 1e9  # a byte count only the source half drew
    a, b = meanstd_map(distorted, target, shrink=True)
    exact = meanstd_map(distorted, target)
    moved = distorted[:, 0] * a[0] + b[0]
    exact_moved = distorted[:, 0] * exact[0][0] + exact[1][0]
    # The shrinkage moves the mapped rows by at most a standard error of the target's std
    # (the pooled std, which the row sets, moved them 10^7 target stds).
    gap = abs(moved.mean() - exact_moved.mean()) / target[:, 0].std()
    assert gap <= np.sqrt(2 / 100) + 1e-9


def test_shrunk_meanstd_is_exact_with_few_features_and_by_default():
    truth, distorted, target = _affine_pair(n=20, d=5)
    exact = meanstd_map(distorted, target)
    np.testing.assert_array_equal(meanstd_map(distorted, target, shrink=True)[0], exact[0])
    moved = distorted * exact[0] + exact[1]
    np.testing.assert_allclose(moved.mean(0), target.mean(0))
    np.testing.assert_allclose(moved.std(0), target.std(0))
    X, _, sd = stack_domains(distorted, target)
    np.testing.assert_allclose(MeanStdAdjuster().fit(X, sample_domain=sd).scale_[0], exact[0])


def test_decoder_lipschitz_constant_of_linear_decoders():
    X = np.random.RandomState(0).normal(size=(80, 12)) * np.linspace(0.5, 3.0, 12)
    pca = PCA(4).fit(X)
    assert decoder_lipschitz_constant(pca, pca.transform(X)) == pytest.approx(1.0)
    svd = TruncatedSVD(4, random_state=0).fit(X)
    assert decoder_lipschitz_constant(svd, svd.transform(X)) == pytest.approx(1.0)
    pipe = make_pipeline(StandardScaler(), PCA(12)).fit(X)
    # Remark 7.2: with all components, de-standardisation gives a_D = max sigma_i.
    a_d = decoder_lipschitz_constant(pipe, pipe.transform(X))
    assert a_d == pytest.approx(pipe[0].scale_.max(), rel=1e-6)


@pytest.mark.parametrize("residual", ["keep", "adjust", "drop"])
def test_integration_brings_source_onto_target(residual):
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    model = LatentGPA(
        residual=residual,
        transporter=GPATransporter(n_steps=150, random_state=0, out_of_sample="auto"),
    )
    out = model.fit_transform(X, y, sample_domain=sd)
    np.testing.assert_array_equal(out[sd < 0], X[sd < 0])
    before = energy_distance(Xs, Xt)
    after = energy_distance(out[sd >= 0], Xt)
    assert after < 0.2 * before
    for c in (0, 1):
        gap = np.linalg.norm(out[sd >= 0][ys == c].mean(0) - Xt[yt == c].mean(0))
        # The pre-alignment matches all rows' moments (shrunk), not each class's: the class
        # means keep a gap of sampling size (0.08-0.24 of the raw gap over seeds 0-2 with
        # exact moments, 0.12-0.24 shrunk).
        assert gap < 0.15 * np.linalg.norm(Xs[ys == c].mean(0) - Xt[yt == c].mean(0))


def test_drop_returns_rows_on_the_encoder_manifold():
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    model = LatentGPA(
        residual="drop",
        prealign=None,
        transporter=GPATransporter(n_steps=20, random_state=0, out_of_sample="auto"),
    )
    out = model.fit(X, y, sample_domain=sd).transform(Xs, ys)
    again = model.encoder_.inverse_transform(model.encoder_.transform(out))
    np.testing.assert_allclose(out, again, atol=1e-8)


def test_labels_in_transform_pick_the_flow():
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    model = LatentGPA(
        transporter=GPATransporter(n_steps=100, random_state=0, out_of_sample="auto")
    ).fit(X, y, sample_domain=sd)
    trained = model.fit_transform(X, y, sample_domain=sd)[sd >= 0]
    with_labels = model.transform(Xs, ys)
    np.testing.assert_allclose(with_labels, trained, atol=1e-3 * np.abs(trained).max())


def test_label_free_integration_runs_one_flow():
    Xs, _, Xt, _ = _low_rank_batch_pair()
    X, _, sd = stack_domains(Xs, Xt)
    model = LatentGPA(
        transporter=GPATransporter(n_steps=100, random_state=0, out_of_sample="auto")
    ).fit(X, sample_domain=sd)
    assert model.classes_ is None
    out = model.transform(X, sample_domain=sd)
    assert energy_distance(out[sd >= 0], Xt) < 0.2 * energy_distance(Xs, Xt)


def test_generation_decodes_samples():
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    model = LatentGPA(
        transporter=GPATransporter(n_steps=100, random_state=0, out_of_sample="auto")
    ).fit(Xt, yt)
    samples = model.sample(60, y=np.repeat([0, 1], 30), random_state=0)
    assert samples.shape == (60, Xt.shape[1])
    for c, rows in ((0, slice(0, 30)), (1, slice(30, 60))):
        gap = np.linalg.norm(samples[rows].mean(0) - Xt[yt == c].mean(0))
        assert gap < 0.5 * np.linalg.norm(Xt[yt == 0].mean(0) - Xt[yt == 1].mean(0))


def test_generated_rows_keep_the_training_range_and_levels():
    from sklearn.datasets import load_digits

    # Decoded digits had 26 % of their pixels outside [0, 16] and 95 % between the whole
    # values pixels take; GPATransporter.sample clips and snaps, LatentGPA.sample did not.
    X, y = load_digits(return_X_y=True)
    X, y = X[np.isin(y, [3, 5, 8])][:150], y[np.isin(y, [3, 5, 8])][:150]
    model = LatentGPA(transporter=GPATransporter(n_steps=20, random_state=0)).fit(X, y)
    samples = model.sample(200, random_state=0)
    assert samples.min() >= 0 and samples.max() <= 16
    np.testing.assert_array_equal(samples, np.round(samples))
    raw = model.sample(200, random_state=0, clip=False, snap=False)
    assert raw.min() < 0 and np.mean(raw != np.round(raw)) > 0.5
    with pytest.raises(TypeError, match="clip must be True or False"):
        model.sample(2, clip=1)


def test_an_encoder_that_keeps_little_of_the_rows_is_named_in_generation():
    from sklearn.datasets import load_digits
    from sklearn.decomposition import KernelPCA

    # An RBF kernel on unscaled pixels represents 1 % of the rows: its samples were
    # recognised at chance, without a word.
    X, y = load_digits(return_X_y=True)
    flow = GPATransporter(n_steps=5, random_state=0)
    kernel = KernelPCA(20, kernel="rbf", fit_inverse_transform=True)
    with pytest.warns(UserWarning, match=r"reconstruction error 0\.9\d of their spread"):
        LatentGPA(encoder=kernel, transporter=flow).fit(X[:150], y[:150])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert LatentGPA(transporter=flow).fit(X[:150], y[:150]).reconstruction_error_ < 0.4


def test_last_step_of_a_pipeline_with_routing():
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    with config_context(enable_metadata_routing=True):
        pipe = Pipeline(
            [
                ("pca", PCA(8)),
                (
                    "gpa",
                    LatentGPA(
                        transporter=GPATransporter(n_steps=30, random_state=0, out_of_sample="auto")
                    ),
                ),
            ]
        )
        out = pipe.fit(X, y, sample_domain=sd).transform(X, sample_domain=sd)
        assert np.isfinite(pipe.score(X, sample_domain=sd))
    assert out.shape == (len(X), 8)


def test_meanstd_adjuster_matches_class_moments():
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    out = MeanStdAdjuster().fit_transform(X, y, sample_domain=sd)
    for c in (0, 1):
        src, tgt = out[sd >= 0][ys == c], Xt[yt == c]
        np.testing.assert_allclose(src.mean(0), tgt.mean(0), atol=1e-10)
        np.testing.assert_allclose(src.std(0), tgt.std(0), rtol=1e-10)
    np.testing.assert_array_equal(out[sd < 0], Xt)


def test_meanstd_adjuster_needs_domains_and_routes_unlabelled_rows():
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    with pytest.raises(ValueError, match="sample_domain"):
        MeanStdAdjuster().fit(X, y)
    adjuster = MeanStdAdjuster().fit(X, y, sample_domain=sd)
    routed = adjuster.flow_index(Xs)
    assert np.mean(routed == ys) > 0.8


def _few_rows_many_genes(n=80, d=300, seed=0):
    """A bimodal target factor the unimodal source lacks, under a per-gene batch effect."""
    rng = np.random.RandomState(seed)
    basis = rng.normal(size=(20, d)) / np.sqrt(20) * np.linspace(3, 0.5, 20)[:, None]

    def study(bimodal):
        latent = rng.normal(size=(n, 20))
        latent[:, 0] = (
            rng.choice([-1.5, 1.5], n) + 0.3 * rng.normal(size=n)
            if bimodal
            else 1.53 * latent[:, 0]
        )
        return latent @ basis + 0.3 * rng.normal(size=(n, d))

    Xs = study(False) * rng.uniform(0.7, 1.4, d) + rng.normal(0, 1.5, d)
    return Xs, study(True)


def test_default_out_of_sample_is_the_better_map_for_new_rows():
    # Here the flow moves neighbouring codes alike, so "auto" must pick "nearest"; on the
    # gene-expression benchmark it scatters them and "auto" picks "barycentric".
    Xs, Xt = _few_rows_many_genes()
    train, new = Xs[:60], Xs[60:]
    X, _, sd = stack_domains(train, Xt)
    distance = {}
    for out_of_sample in ("auto", "nearest", "barycentric"):
        model = LatentGPA(
            transporter=GPATransporter(out_of_sample=out_of_sample, n_steps=200, random_state=0)
        )
        model.fit(X, sample_domain=sd)
        distance[out_of_sample] = energy_distance(model.transform(new), Xt)
    assert distance["auto"] == pytest.approx(min(distance["nearest"], distance["barycentric"]))
    assert distance["auto"] < 0.25 * energy_distance(new, Xt)


def test_particles_are_the_decoded_trained_particles():
    """``particles_``: generated samples in the original space; in integration, what
    ``fit_transform`` returns for the source rows."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:150], y[:150]
    generator = LatentGPA(
        transporter=GPATransporter(n_steps=20, n_particles=90, random_state=0, out_of_sample="auto")
    ).fit(X, y)
    assert generator.particles_.shape == (90, 64)
    expected = generator.encoder_.inverse_transform(generator.transporter_.particles_)
    np.testing.assert_allclose(generator.particles_, expected)
    assert set(generator.particle_labels_) == set(np.unique(y))
    domain = np.where(np.arange(150) < 75, 1, -1)
    integrated = LatentGPA(
        transporter=GPATransporter(n_steps=20, random_state=0, out_of_sample="auto")
    )
    out = integrated.fit_transform(X + 2.0 * (domain == 1)[:, None], sample_domain=domain)
    np.testing.assert_array_equal(out[domain == 1], integrated.particles_)


def test_gene_flat_in_one_study_is_not_blown_up_or_left_spread():
    # A gene flat at a detection floor in the source: its std is ~1e-15, not 0, and was
    # divided by (new rows with 8.0 there came out at 1e14).  A gene flat in the target
    # kept the source's spread; it now takes the target's value.
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    Xs, Xt = Xs.copy(), Xt.copy()
    Xs[:, 0] = 7.7
    Xt[:, 1] = 0.3
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    new = Xs[:5].copy()
    new[:, 0] = 8.0
    bound = 10 * np.abs(X).max()
    adjuster = MeanStdAdjuster().fit(X, y, sample_domain=sd)
    assert np.abs(adjuster.transform(new, ys[:5])).max() < bound
    np.testing.assert_allclose(adjuster.transform(Xs, ys)[:, 1], 0.3)
    model = LatentGPA(
        transporter=GPATransporter(n_steps=30, random_state=0, out_of_sample="auto")
    ).fit(X, y, sample_domain=sd)
    assert np.abs(model.transform(new, ys[:5])).max() < bound
    np.testing.assert_allclose(model.transform(Xs, ys)[:, 1], 0.3, atol=1e-8)


def test_decoder_lipschitz_constant_decodes_an_affine_decoder_once():
    # The full Jacobian (d + 1 decoded rows and an SVD) was computed at 20 codes even for
    # PCA, most of the fit's time on 10^4 genes; now once, plus 2 rows per other code.
    class CountingPCA(PCA):
        rows = 0

        def inverse_transform(self, X):
            CountingPCA.rows += len(X)
            return super().inverse_transform(X)

    X = np.random.RandomState(0).normal(size=(60, 300)) * np.linspace(0.5, 3.0, 300)
    pca = CountingPCA(30).fit(X)
    assert decoder_lipschitz_constant(pca, pca.transform(X)) == pytest.approx(1.0)
    assert CountingPCA.rows <= 31 + 2 * 19

    class Cubic:
        """A nonlinear decoder: x = z ** 3 (Jacobian 3 z^2, largest at the largest |z|)."""

        def inverse_transform(self, Z):
            return Z**3

    codes = np.linspace(-2, 2, 20)[:, None] * np.ones((1, 2))
    expected = 3 * np.sqrt(2 * 4.0**2) / np.sqrt(2)
    assert decoder_lipschitz_constant(Cubic(), codes) == pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: default_encoder(1.5), "'variance' parameter of default_encoder"),
        (lambda: default_encoder(True), "'variance' parameter of default_encoder"),
        (
            lambda: decoder_lipschitz_constant(StandardScaler(), np.zeros((3, 2)), step=0.0),
            "'step' parameter of decoder_lipschitz_constant",
        ),
        (
            lambda: decoder_lipschitz_constant(object(), np.zeros((3, 2))),
            "'encoder' parameter of decoder_lipschitz_constant",
        ),
        (
            lambda: decoder_lipschitz_constant(StandardScaler(), np.zeros(3)),
            "Expected 2D array",
        ),
    ],
)
def test_latent_helpers_name_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    assert default_encoder(3)[-1].n_components == 3  # a number of components is fine


def test_fit_transform_keeps_float32_as_transform_does():
    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs.astype(np.float32), Xt.astype(np.float32), ys, yt)
    model = LatentGPA(transporter=GPATransporter(n_steps=10, random_state=0, out_of_sample="auto"))
    assert model.fit_transform(X, y, sample_domain=sd).dtype == np.float32
    assert model.transform(X, y, sample_domain=sd).dtype == np.float32


def test_genes_by_samples_matrix_gets_a_transpose_hint():
    Xs, ys, Xt, yt = _low_rank_batch_pair(n=30, d=80)
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    for prealign in ("shrunk", "meanstd", None):
        with pytest.raises(ValueError, match="is X transposed"):
            LatentGPA(
                prealign=prealign, transporter=GPATransporter(n_steps=5, out_of_sample="auto")
            ).fit(X.T, y, sample_domain=sd)


def test_class_router_picks_the_classifier_that_cross_validates_better():
    from sklearn.datasets import make_moons

    from sklearn_gpa.baselines import class_router

    rng = np.random.RandomState(0)
    # Few rows in many dimensions, classes apart along one direction: the ridge.
    wide = rng.normal(size=(60, 300))
    labels = np.repeat([0, 1], 30)
    wide[labels == 1] += 0.35
    router = class_router(wide, labels)
    assert type(router).__name__ == "RidgeClassifierCV"
    new = rng.normal(size=(200, 300)) + 0.35 * np.repeat([0, 1], 100)[:, None]
    assert np.mean(router.predict(new) == np.repeat([0, 1], 100)) > 0.9
    # Interleaved half-moons in 2-D: the nearest-neighbour vote.
    moons, moon_labels = make_moons(300, noise=0.1, random_state=0)
    assert type(class_router(moons, moon_labels)).__name__ == "KNeighborsClassifier"
    # A class with one row cannot be cross-validated: the vote; one class: no router.
    assert type(class_router(wide[:31], labels[:31])).__name__ == "KNeighborsClassifier"
    assert class_router(wide[:30], labels[:30]) is None


def test_class_router_is_quiet_on_tiny_classes_and_quick_on_many_rows():
    import warnings

    from sklearn_gpa.baselines import class_router

    rng = np.random.RandomState(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Scoring failed" warnings from the vote's CV
        for sizes in ((2, 2), (3, 3), (2, 3), (2,) * 30):
            labels = np.repeat(np.arange(len(sizes)), sizes)
            router = class_router(rng.normal(size=(len(labels), 4)), labels)
            assert type(router).__name__ == "KNeighborsClassifier"
    # The choice is cross-validated on a stratified subsample of 2 000 rows (all 40 000 took
    # 9 s: the vote's cross-validation grows as the square of the rows); the fit uses all.
    from sklearn_gpa import baselines

    seen = []
    cross_val_score = baselines.cross_val_score

    def recording(model, rows, labels, **kwargs):
        seen.append(len(rows))
        return cross_val_score(model, rows, labels, **kwargs)

    rows = rng.normal(size=(40_000, 20))
    labels = (rows[:, 0] > 0).astype(int)
    try:
        baselines.cross_val_score = recording
        router = class_router(rows, labels)
    finally:
        baselines.cross_val_score = cross_val_score
    assert seen == [2000, 2000]
    assert router.n_features_in_ == 20 and np.mean(router.predict(rows) == labels) > 0.95


def test_pipeline_transform_without_labels_routes_rows_and_moves_every_row():
    # A Pipeline passes no y to transform: rows go to the class flow the router predicts, so
    # the training source rows come out as fit_transform put them wherever the router is right;
    # without sample_domain the target rows are moved too.
    from sklearn import config_context
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xs, ys, Xt, yt = _low_rank_batch_pair()
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    flow = GPATransporter(n_steps=50, out_of_sample="auto", conditional=True, random_state=0)
    with config_context(enable_metadata_routing=True):
        latent = LatentGPA(default_encoder(0.9), transporter=flow)
        latent.set_fit_request(sample_domain=True).set_transform_request(sample_domain=True)
        pipe = make_pipeline(StandardScaler(), latent)
        fitted = pipe.fit_transform(X, y, sample_domain=sd)
        routed = pipe.transform(X)
        kept = pipe.transform(X, sample_domain=sd)
    model = pipe[-1]
    scaled = pipe[0].transform(X)
    right = model.transporter_.flow_index(
        model.encoder_.transform(model.adjuster_.transform(scaled[sd >= 0]))
    ) == np.searchsorted(model.classes_, ys)
    assert right.mean() > 0.8
    np.testing.assert_allclose(routed[sd >= 0][right], fitted[sd >= 0][right], atol=1e-8)
    np.testing.assert_allclose(kept[sd < 0], scaled[sd < 0])  # as the scaler left them
    assert not np.allclose(routed[sd < 0], scaled[sd < 0])


def _weak_factor_pair(weights, seed=0, n=60, d=500):
    """Two halves of one population with eight strong biological axes; the source gets
    per-sample factors with gene loadings of ``weights`` gene sds (GSE4335's cell of
    ``bench_known_truth``: 0.8, 0.5, 0.3), then the shrunk mean/std pre-alignment."""
    rng = np.random.RandomState(seed)
    biology = rng.normal(size=(8, d)) * np.linspace(3, 1, 8)[:, None]
    truth = rng.normal(size=(2 * n, 8)) @ biology + rng.normal(size=(2 * n, d))
    source, target = truth[:n], truth[n:]
    loadings = rng.normal(size=(len(weights), d)) * np.array(weights)[:, None] * source.std(0)
    distorted = source + rng.normal(size=(n, len(weights))) @ loadings
    a, b = meanstd_map(distorted, target, shrink=True)
    return stack_domains(distorted * a + b, target), loadings


def test_discrepancy_encoder_finds_weak_factors_beside_a_strong_one():
    from sklearn_gpa.latent import DiscrepancyEncoder

    # The largest-eigenvalue test of the former encoder found 1 or 2 of these 3 directions
    # (the strong factor inflates the permutations' largest eigenvalue); the step-down test
    # projects each accepted direction out before testing the next one.
    (X, _, sd), loadings = _weak_factor_pair((0.8, 0.5, 0.3))
    encoder = DiscrepancyEncoder().fit(X, sample_domain=sd)
    assert encoder.n_components_ == 3
    unit = loadings / encoder.scale_
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    captured = np.sum((unit @ encoder.components_.T) ** 2, axis=1)
    assert np.all(captured > 0.9)  # each factor's direction lies in the found span


def _loud_factor_pair(seed=0, n=60, d=500, weight=2.0):
    """As ``_weak_factor_pair``, but one strong per-sample factor whose gene pattern lies
    along the three loudest biological axes (as a per-sample intensity factor follows the
    genes' mean profile); returns the stacked rows, the pattern and the batch-free source."""
    rng = np.random.RandomState(seed)
    biology = rng.normal(size=(8, d)) * np.linspace(3, 1, 8)[:, None]
    truth = rng.normal(size=(2 * n, 8)) @ biology + rng.normal(size=(2 * n, d))
    source, target = truth[:n], truth[n:]
    pattern = biology[:3].sum(0) + rng.normal(size=d)
    loading = weight * pattern / pattern.std() * source.std(0)
    distorted = source + rng.normal(size=(n, 1)) * loading
    a, b = meanstd_map(distorted, target, shrink=True)
    return stack_domains(distorted * a + b, target), loading, source


@pytest.mark.parametrize("seed", [0, 1])
def test_discrepancy_encoder_patterns_follow_a_factor_along_loud_axes(seed):
    from sklearn_gpa.latent import DiscrepancyEncoder

    (X, _, sd), loading, truth = _loud_factor_pair(seed)
    captured, recovery = {}, {}
    for move_along in ("filters", "patterns"):
        encoder = DiscrepancyEncoder(move_along=move_along).fit(X, sample_domain=sd)
        # Along the patterns the factor is removed whole after its first direction; the
        # filters keep testing what their span leaves of it (seed 1: a second filter, with
        # the source's spreads matched again; ten when the matching put back parts along
        # the first filter).
        k = encoder.n_components_
        assert k == 1 if move_along == "patterns" else 1 <= k <= 2
        unit = loading / encoder.scale_
        unit /= np.linalg.norm(unit)
        captured[move_along] = float((unit @ encoder.components_[0]) ** 2)
        # Codes are biorthogonal to the directions rows move along: decoding then encoding
        # gives the codes back.
        np.testing.assert_allclose(encoder.filters_ @ encoder.components_.T, np.eye(k), atol=1e-10)
        codes = encoder.transform(X)
        np.testing.assert_allclose(encoder.transform(encoder.inverse_transform(codes)), codes)
        model = LatentGPA(
            encoder=DiscrepancyEncoder(move_along=move_along),
            transporter=GPATransporter(random_state=0),
        ).fit(X, sample_domain=sd)
        moved = model.transform(X[sd >= 0])
        recovery[move_along] = np.sqrt(np.mean((moved - truth) ** 2)) / np.sqrt(
            np.mean((X[sd >= 0] - truth) ** 2)
        )
    # The first filter leans away from the loud axes the factor lies along (measured
    # 0.05-0.06 of the pattern); the gap applied to it is the pattern (0.82-0.83), and
    # moving rows along it removes the factor (error 0.55-0.59 of the pre-aligned rows'
    # against 0.88-0.91).
    assert captured["filters"] < 0.3 and captured["patterns"] > 0.75
    assert recovery["patterns"] < 0.7 and recovery["patterns"] < recovery["filters"] - 0.2
    with pytest.raises(ValueError, match="move_along"):
        DiscrepancyEncoder(move_along="loadings").fit(X, sample_domain=sd)


def test_discrepancy_encoder_finds_a_second_factor_once_spreads_are_matched_again():
    from sklearn_gpa._discrepancy import step_down_directions
    from sklearn_gpa.latent import DiscrepancyEncoder

    # Two factors at 25 rows a side, the first a "brightness" (mostly positive loadings)
    # that inflates the genes' spreads: the pre-alignment shrinks the source's biology to
    # match them, and once the first factor is removed the target varies more along the
    # biology, which hid the second factor from a test on what was left (seeds 0 and 6 of
    # 10; 2 of 10 missed it, none with the spreads matched again).
    for seed in (0, 6):
        rng = np.random.RandomState(seed)
        biology = rng.normal(size=(8, 500)) * np.linspace(3, 1, 8)[:, None]
        truth = rng.normal(size=(50, 8)) @ biology + rng.normal(size=(50, 500))
        source, target = truth[:25], truth[25:]
        bright = (0.4 + rng.normal(0, 0.5, 500)) * 0.7 / 0.64
        loadings = np.array([bright, rng.normal(0, 0.5, 500)]) * source.std(0)
        scores = np.column_stack([rng.normal(size=25), rng.normal(size=25)])
        distorted = source + scores @ loadings
        a, b = meanstd_map(distorted, target, shrink=True)
        X, _, sd = stack_domains(distorted * a + b, target)
        encoder = DiscrepancyEncoder().fit(X, sample_domain=sd)
        assert encoder.n_components_ == 2
        units = loadings * a / encoder.scale_
        units /= np.linalg.norm(units, axis=1, keepdims=True)
        assert np.all(np.sum((units @ encoder.components_.T) ** 2, axis=1) > 0.5)
        rows = [(side - side.mean(0)) / encoder.scale_ for side in (X[sd >= 0], X[sd < 0])]
        plain = step_down_directions(*rows, rng=np.random.RandomState(0), rematch=False)
        assert plain.shape[1] == 1


def test_discrepancy_encoder_rematch_is_for_rows_matched_feature_by_feature():
    from sklearn_gpa.latent import DiscrepancyEncoder

    rng = np.random.RandomState(0)
    source, target = rng.normal(size=(100, 20)), rng.normal(size=(100, 20))
    source[:, 0] *= 3
    source[:, 1] *= 2
    X, _, sd = stack_domains(source, target)
    # Unmatched rows: re-matching the spreads after the first direction also removes the
    # second feature's difference; without it both are found.
    assert DiscrepancyEncoder().fit(X, sample_domain=sd).n_components_ == 1
    plain = DiscrepancyEncoder(rematch=False).fit(X, sample_domain=sd)
    assert plain.n_components_ == 2
    assert set(np.argmax(np.abs(plain.components_), axis=1)) == {0, 1}
    # Once the directions fill the rows' span, what is left is round-off, not a direction
    # (it raised a LinAlgError).
    for n_features in (1, 2, 3):
        X, _, sd = stack_domains(
            rng.normal(size=(300, n_features)) * 3, rng.normal(size=(300, n_features))
        )
        for move_along in ("filters", "patterns"):
            encoder = DiscrepancyEncoder(
                alternative="two-sided", move_along=move_along, rematch=False
            ).fit(X, sample_domain=sd)
            assert encoder.n_components_ == n_features
            assert np.all(np.isfinite(encoder.components_))
    # LatentGPA re-matches only what its pre-alignment matched, and prealign=None leaves
    # the codes as they are too.
    X, _, sd = stack_domains(source, target)
    model = LatentGPA(prealign=None, random_state=0).fit(X, sample_domain=sd)
    assert model.encoder_.rematch is False and model.transporter_.prealign_ is None
    model = LatentGPA(random_state=0).fit(X, sample_domain=sd)
    assert model.encoder_.rematch is True


def test_discrepancy_encoder_finds_nothing_without_an_effect():
    from sklearn_gpa.latent import DiscrepancyEncoder

    # Two halves of one population: the test's size is alpha=0.01, so nothing is found.
    for seed in range(8):
        (X, _, sd), _ = _weak_factor_pair((0.0,), seed=seed)
        assert DiscrepancyEncoder().fit(X, sample_domain=sd).n_components_ == 0


def test_discrepancy_encoder_counts_a_repeated_row_once():
    from sklearn_gpa.latent import DiscrepancyEncoder

    # 20 source rows, each ten times, drawn like the target: copies are no evidence (the
    # test found 10 directions of noise, and LatentGPA then moved the rows off their truth).
    rng = np.random.RandomState(0)
    loadings = rng.standard_normal((5, 40))
    draw = lambda n: rng.standard_normal((n, 5)) @ loadings + rng.standard_normal((n, 40))  # noqa: E731
    source, target = draw(20), draw(200)
    X, _, sd = stack_domains(np.repeat(source, 10, axis=0), target)
    assert DiscrepancyEncoder().fit(X, sample_domain=sd).n_components_ == 0
    # Copies still weigh in the statistic: on discrete data, where many rows repeat, a
    # feature whose values' frequencies differ is found (dropping the copies lost it).
    rng = np.random.RandomState(0)

    def side(p, n=300):
        return np.column_stack([rng.choice([-1, 0, 1], n, p=p), rng.choice([-1, 0, 1], (n, 2))])

    X, _, sd = stack_domains(side([0.45, 0.1, 0.45]), side([0.05, 0.9, 0.05]))
    encoder = DiscrepancyEncoder().fit(X.astype(float), sample_domain=sd)
    assert encoder.n_components_ == 1 and abs(encoder.components_[0, 0]) > 0.99
    # Target labels with repeated target rows (the labels were indexed with the distinct
    # rows' length: an IndexError).
    Xs, Xt = rng.normal(size=(60, 5)), rng.normal(size=(60, 5))
    Xs[:, 0] *= 3
    Xt[30:] = Xt[:30]
    X, y, sd = stack_domains(Xs, Xt, None, np.tile([0, 1], 30))
    assert DiscrepancyEncoder().fit(X, y, sample_domain=sd).n_components_ >= 1


def test_discrepancy_encoder_alternative_and_level():
    from sklearn_gpa.latent import DiscrepancyEncoder

    # A factor on the target side: the source has less variance along it, which only the
    # two-sided test looks for.
    (X, _, sd), _ = _weak_factor_pair((0.8,))
    swapped = np.where(sd >= 0, -1, 0)
    assert DiscrepancyEncoder().fit(X, sample_domain=swapped).n_components_ == 0
    two_sided = DiscrepancyEncoder(alternative="two-sided").fit(X, sample_domain=swapped)
    assert two_sided.n_components_ == 1
    with pytest.raises(ValueError, match="n_permutations=50 is too few for alpha=0.01"):
        DiscrepancyEncoder(n_permutations=50).fit(X, sample_domain=sd)


def test_discrepancy_encoder_names_bad_input():
    from sklearn_gpa.latent import DiscrepancyEncoder

    distorted, _, target = _factor_pair(rank=2)
    X, _, sd = stack_domains(distorted, target)
    with pytest.raises(ValueError, match="needs sample_domain"):
        DiscrepancyEncoder().fit(X)
    with pytest.raises(ValueError, match="one entry per row"):
        DiscrepancyEncoder().fit(X, sample_domain=sd[:-1])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DiscrepancyEncoder().fit(bad, sample_domain=sd)
    encoder = DiscrepancyEncoder().fit(X, sample_domain=sd)
    codes = encoder.transform(X)
    np.testing.assert_allclose(encoder.transform(encoder.inverse_transform(codes)), codes)
    with pytest.raises(ValueError, match="features"):
        encoder.transform(X[:, :-1])
    with pytest.raises(ValueError, match="components"):
        encoder.inverse_transform(np.zeros((2, encoder.n_components_ + 1)))


def _brightness_pair(n=100, d=200, seed=0):
    """Two halves of one population of expression-like rows; each source row is scaled by
    its own log-normal factor about a level below the data (an array's brightness), then
    every gene gets an affine effect.  The truth of each source row is known."""
    rng = np.random.RandomState(seed)
    profile = rng.uniform(4.0, 12.0, d)
    biology = rng.normal(size=(2 * n, 5)) @ rng.normal(0.0, 0.5, (5, d))
    truth = profile + biology + 0.5 * rng.normal(size=(2 * n, d))
    source, target = truth[:n], truth[n:]
    level = truth.min() - 1.0
    distorted = level + (source - level) * rng.lognormal(0.0, 0.25, (n, 1))
    distorted = distorted * rng.uniform(0.8, 1.25, d) + rng.normal(0.0, 0.5, d)
    return distorted, source, target


def test_sample_alignment_removes_a_per_sample_brightness_effect():
    distorted, truth, target = _brightness_pair()
    X, _, sd = stack_domains(distorted, target)
    kept = distorted.copy()
    errors = {}
    for setting in ("auto", None):
        model = LatentGPA(sample_alignment=setting).fit(X, sample_domain=sd)
        errors[setting] = _recovery(model.transform(distorted), distorted, truth)
    np.testing.assert_array_equal(distorted, kept)
    assert model.sample_levels_ is None  # None: never
    per_gene = MeanStdAdjuster(conditional=False, shrink=True).fit(X, sample_domain=sd)
    per_gene_error = _recovery(per_gene.transform(distorted), distorted, truth)
    # A per-gene map cannot remove a per-sample effect; the rows' levels can.
    assert errors["auto"] < 0.5 * per_gene_error
    assert errors["auto"] < 0.6 * errors[None]
    fitted = LatentGPA().fit(X, sample_domain=sd).sample_levels_
    assert fitted is not None and fitted.spread is not None
    # New rows of the source move as the training rows did.
    model = LatentGPA().fit(X, sample_domain=sd)
    np.testing.assert_allclose(model.transform(distorted[:10]), model.transform(distorted)[:10])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_alignment_needs_evidence_and_a_shared_unit(seed):
    # Two halves of one population, and a per-gene effect: no map.
    distorted, _, target = _factor_pair(rank=0, seed=seed)
    assert SampleLevels.fit(distorted, target) is None
    rng = np.random.RandomState(seed)
    truth = rng.normal(size=(200, 60)) + rng.uniform(4, 12, 60)
    assert SampleLevels.fit(truth[:100], truth[100:]) is None
    # A brightness effect on features of different units (spreads 1 to 1000): a row's mean
    # is no level there, and "auto" leaves it; "always" does not.
    distorted, _, target = _brightness_pair(seed=seed)
    units = np.logspace(0, 3, distorted.shape[1])
    assert SampleLevels.fit(distorted * units, target * units) is None
    assert SampleLevels.fit(distorted * units, target * units, always=True) is not None
    assert SampleLevels.fit(distorted, target) is not None
    # The source study in another unit (log2 against log10: every value 3.3 times, and an
    # offset): the rows' levels vary 11 times as much, but so does every feature.  No map;
    # a brightness effect in that unit still gets one.
    assert SampleLevels.fit(3.3 * truth[:100] + 2.0, truth[100:]) is None
    assert SampleLevels.fit(3.3 * distorted + 2.0, target) is not None


def test_sample_alignment_costs_little_where_per_sample_factors_move_rows_levels():
    # Two factors with loadings N(0, 9) on 60 genes move the rows' means too (their loadings'
    # mean is not 0): the map runs on 1 of these 4 seeds (3 before the levels were taken
    # relative to each side's overall spread, which the factors raise as well), and the
    # flow still does the work.
    fired = 0
    for seed in range(4):
        distorted, truth, target = _factor_pair(rank=2, seed=seed)
        X, _, sd = stack_domains(distorted, target)
        errors = {}
        for setting in ("auto", None):
            model = LatentGPA(sample_alignment=setting).fit(X, sample_domain=sd)
            errors[setting] = _recovery(model.transform(distorted), distorted, truth)
            fired += model.sample_levels_ is not None
        assert errors["auto"] < 1.1 * errors[None]
    assert fired == 1


def test_sample_levels_map_keeps_order_and_matches_the_targets_levels():
    distorted, _, target = _brightness_pair(seed=3)
    distorted[0] = 7.0  # a constant row: no spread to scale
    kept = distorted.copy()
    levels = SampleLevels.fit(distorted, target, always=True)
    moved = levels.transform(distorted)
    np.testing.assert_array_equal(distorted, kept)
    assert np.all(np.isfinite(moved)) and np.ptp(moved[0]) == 0
    before, after = distorted.mean(1), moved.mean(1)
    assert np.array_equal(np.argsort(before), np.argsort(after))
    assert after.std() == pytest.approx(target.mean(1).std(), rel=1e-6)
    assert after.mean() == pytest.approx(target.mean(1).mean(), rel=1e-6)
    spreads = np.log(moved[1:].std(1))
    assert spreads.std() == pytest.approx(np.log(target.std(1)).std(), rel=0.05)
    # Source rows all alike (one level, one spread): "always" shifts them, as meanstd_map
    # does a constant feature, instead of dividing by their zero spread.
    alike = np.tile(distorted[1], (len(distorted), 1))
    shifted = SampleLevels.fit(alike, target, always=True).transform(alike)
    assert np.all(np.isfinite(shifted))
    assert shifted.mean(1) == pytest.approx(np.full(len(alike), target.mean(1).mean()))


def test_sample_levels_leave_a_feature_in_another_unit_out():
    # 70 genes and the patients' ages (nki70 keeps them beside its genes): a row's level is
    # its genes' mean, and the ages keep their values.  The ages' range is 14 times the
    # target genes' median range, 7 times that of both sides stacked (the brightness effect
    # widens the source's): which features are odd is decided on the target rows.
    distorted, _, target = _brightness_pair(n=60, d=70, seed=1)
    ages = np.random.RandomState(1).uniform(20.0, 90.0, (120, 1))
    source = np.hstack([distorted, ages[:60]])
    levels = SampleLevels.fit(source, np.hstack([target, ages[60:]]))
    plain = SampleLevels.fit(distorted, target)
    assert levels is not None and plain is not None
    moved = levels.transform(source)
    np.testing.assert_array_equal(moved[:, -1], ages[:60, 0])
    np.testing.assert_allclose(moved[:, :-1], plain.transform(distorted))


def test_sample_alignment_names_a_bad_setting():
    distorted, _, target = _brightness_pair(n=30, d=40)
    X, _, sd = stack_domains(distorted, target)
    with pytest.raises(ValueError, match="sample_alignment"):
        LatentGPA(sample_alignment="yes").fit(X, sample_domain=sd)


def test_random_state_makes_fit_reproducible_and_keeps_a_seeded_transporter():
    distorted, _, target = _factor_pair(rank=2, n=60, d=30)
    X, _, sd = stack_domains(distorted, target)
    first, again = (LatentGPA(random_state=3).fit_transform(X, sample_domain=sd) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    flow = LatentGPA(random_state=3).fit(X, sample_domain=sd).transporter_
    assert flow.random_state == 3
    # The default flow: a direct transporter's maximum, twice its critic updates.
    assert (flow.n_steps, flow.n_critic, flow.standardize) == (2000, 10, "common")
    seeded = LatentGPA(transporter=GPATransporter(random_state=7), random_state=3)
    assert seeded.fit(X, sample_domain=sd).transporter_.random_state == 7
    assert seeded.transporter.random_state == 7  # the parameter itself is left alone


def test_labels_on_the_target_only_run_one_flow_without_a_warning():
    # The encoder uses the target's labels; the flow is one label-free flow, and the
    # transporter's "Labels ignored" warning would be wrong about LatentGPA.
    distorted, _, target = _factor_pair(rank=2)
    labels = np.random.RandomState(0).randint(0, 2, len(target))
    X, y, sd = stack_domains(distorted, target, None, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = LatentGPA(random_state=0).fit(X, y, sample_domain=sd)
    assert model.transporter_ is not None and model.transporter_.classes_ is None
    unknown = np.full(len(distorted), -1)
    np.testing.assert_allclose(model.transform(distorted), model.transform(distorted, unknown))


def _curve_pair(n=60, d=200, seed=0, curve=True):
    """Two halves of one population of expression-like rows (genes at intensities 4-12);
    the source gets one monotone curve of the intensity shared by every gene (a bend above
    a knee and a cubic tail), then a per-gene affine effect.  The truth is known."""
    rng = np.random.RandomState(seed)
    profile = rng.uniform(4.0, 12.0, d)
    biology = rng.normal(size=(2 * n, 4)) @ rng.normal(0.0, 0.5, (4, d))
    truth = profile + biology + 0.6 * rng.normal(size=(2 * n, d))
    source, target = truth[:n], truth[n:]
    distorted = source
    if curve:
        u = (source - truth.mean()) / truth.std()
        bent = u + 0.6 * np.log1p(np.exp(2.5 * (u - 0.2))) - 0.2 * u + 0.1 * u**3
        distorted = truth.mean() + truth.std() * bent
    distorted = distorted * rng.uniform(0.8, 1.25, d) + rng.normal(0.0, 0.5, d)
    return distorted, source, target


def _quantile_mapped(source, target):
    """Per-gene quantile mapping (each source value to the target's quantile at its rank)."""
    ranks = np.argsort(np.argsort(source, axis=0), axis=0)
    levels = (ranks + 0.5) / len(source)
    return np.column_stack(
        [np.quantile(target[:, j], levels[:, j]) for j in range(source.shape[1])]
    )


def _narrow_factor_pair(seed, n=100, d=20):
    """A factor along a direction in which the rows hardly vary: its code must shrink
    about 20-fold."""
    rng = np.random.RandomState(seed)
    u = rng.choice([-1.0, 1.0], d) / np.sqrt(d)  # no per-sample level
    truth = rng.normal(size=(2 * n, d))
    truth -= np.outer(truth @ u, u) * 0.98
    source, target = truth[:n], truth[n:]
    return source + rng.normal(size=(n, 1)) * 3 * u, target, source


def test_latent_flow_starts_from_the_codes_aligned_moments(monkeypatch):
    from sklearn_gpa import latent

    def recovery(seed):
        distorted, target, truth = _narrow_factor_pair(seed)
        X, _, sd = stack_domains(distorted, target)
        model = LatentGPA(random_state=0).fit(X, sample_domain=sd)
        error = np.sqrt(np.mean((model.transform(distorted) - truth) ** 2))
        return model, error / np.sqrt(np.mean((distorted - truth) ** 2))

    # Each code's mean and spread matched first: the flow has nothing left to do
    # (measured 0.12-0.18 of the distorted rows' error).
    for seed in range(4):
        model, error = recovery(seed)
        assert model.n_components_ == 1 and model.n_steps_ == 0
        assert model.transporter_.stop_reason_ == "converged" and error < 0.2
    # From the codes as they are, the flow ran out of its 2000 steps with the particles
    # still spread (0.37).
    monkeypatch.setattr(latent, "CODES_PREALIGN", False)
    model, error = recovery(1)
    assert model.transporter_.stop_reason_ == "n_steps" and error > 0.3


def test_intensity_curve_is_undone_better_than_per_gene_maps():
    errors, curves = {}, None
    distorted, truth, target = _curve_pair()
    X, _, sd = stack_domains(distorted, target)
    for setting in ("auto", None):
        model = LatentGPA(intensity_curve=setting).fit(X, sample_domain=sd)
        errors[setting] = _recovery(model.transform(distorted), distorted, truth)
        curves = curves or model.intensity_curves_
    assert curves is not None and set(curves) == {1} and curves[1].weight > 0.6
    per_gene = min(
        _recovery(_quantile_mapped(distorted, target), distorted, truth),
        _recovery(
            MeanStdAdjuster().fit(X, sample_domain=sd).transform(distorted), distorted, truth
        ),
    )
    # The curve pooled over genes of like intensity: 0.074 of the distortion left, against
    # 0.087 by the shrunk mean/std alone, 0.088 by exact mean/std, 0.093 by per-gene
    # quantiles (most of the distortion is the per-gene affine part every method removes).
    assert errors["auto"] < 0.9 * errors[None]
    assert errors["auto"] < 0.9 * per_gene
    # New source rows are mapped as the training rows were.
    model = LatentGPA().fit(X, sample_domain=sd)
    np.testing.assert_allclose(model.transform(distorted[:7]), model.transform(distorted)[:7])


def _mix_pair(seed, n=60, d=200):
    """``_curve_pair``'s rows with a per-sample factor (loadings 0.3-0.8, one sign) added
    before the curve: a mix of a factor, a shared curve and a per-gene affine effect."""
    rng = np.random.RandomState(seed)
    profile = rng.uniform(4.0, 12.0, d)
    biology = rng.normal(size=(2 * n, 4)) @ rng.normal(0.0, 0.5, (4, d))
    truth = profile + biology + 0.6 * rng.normal(size=(2 * n, d))
    source, target = truth[:n], truth[n:]
    factored = source + rng.normal(size=(n, 1)) @ rng.uniform(0.3, 0.8, (1, d))
    u = (factored - truth.mean()) / truth.std()
    bent = u + 0.6 * np.log1p(np.exp(2.5 * (u - 0.2))) - 0.2 * u + 0.1 * u**3
    distorted = truth.mean() + truth.std() * bent
    return distorted * rng.uniform(0.8, 1.25, d) + rng.normal(0.0, 0.5, d), source, target


@pytest.mark.parametrize("seed", [0, 3])
def test_intensity_curve_is_looked_for_after_the_factors(monkeypatch, seed):
    from sklearn_gpa import latent

    distorted, truth, target = _mix_pair(seed)
    X, _, sd = stack_domains(distorted, target)
    model = LatentGPA(random_state=0).fit(X, sample_domain=sd)
    assert model.n_components_ == 1 and set(model.intensity_curves_) == {1}
    moved = model.transform(distorted)
    np.testing.assert_array_equal(model.fit_transform(X, sample_domain=sd)[sd >= 0], moved)
    np.testing.assert_allclose(model.transform(distorted[:7]), moved[:7])
    # One source domain: its rows move, curve included, whatever their source value.
    np.testing.assert_array_equal(model.transform(distorted, sample_domain=np.full(60, 7)), moved)
    # Only where the encoder found no direction (before): the curve stayed in the rows
    # (measured 0.103 -> 0.095 and 0.102 -> 0.095 of the distortion left).
    monkeypatch.setattr(latent, "CURVE_AFTER_FLOW", False)
    before = LatentGPA(random_state=0).fit(X, sample_domain=sd)
    assert before.n_components_ == 1 and before.intensity_curves_ is None
    error = _recovery(moved, distorted, truth)
    assert error < 0.96 * _recovery(before.transform(distorted), distorted, truth)


def test_intensity_curve_needs_evidence_and_a_shared_unit():
    from sklearn_gpa._intensity_curve import IntensityCurve

    # Two halves of one population (and so a per-gene affine effect, which changes no
    # gene's shape): the permutation test at 0.05 fires about once in twenty.
    fired = sum(
        IntensityCurve.fit(*_curve_pair(seed=seed, curve=False)[::2], random_state=seed) is not None
        for seed in range(20)
    )
    assert fired <= 3
    distorted, _, target = _curve_pair()
    assert IntensityCurve.fit(distorted, target) is not None
    # Features of different units (spreads 1 to 1000): intensities are not shared.
    units = np.logspace(0, 3, distorted.shape[1])
    assert IntensityCurve.fit(distorted * units, target * units) is None
    # Too few features to pool.
    assert IntensityCurve.fit(distorted[:, :40], target[:, :40]) is None
    X, _, sd = stack_domains(distorted, target)
    assert LatentGPA(intensity_curve=None).fit(X, sample_domain=sd).intensity_curves_ is None
    with pytest.raises(ValueError, match="intensity_curve"):
        LatentGPA(intensity_curve="yes").fit(X, sample_domain=sd)


def test_intensity_curve_keeps_each_genes_moments_rows_order_and_an_age():
    from sklearn_gpa._intensity_curve import IntensityCurve

    distorted, _, target = _curve_pair(seed=1)
    ages = np.random.RandomState(1).uniform(20.0, 90.0, (120, 1))
    source = np.hstack([distorted, ages[:60]])
    kept = source.copy()
    curve = IntensityCurve.fit(source, np.hstack([target, ages[60:]]))
    assert curve is not None and not curve.features[-1]
    moved = curve.transform(source)
    np.testing.assert_array_equal(source, kept)
    np.testing.assert_array_equal(moved[:, -1], ages[:60, 0])
    np.testing.assert_allclose(moved.mean(0), source.mean(0))
    np.testing.assert_allclose(moved.std(0), source.std(0))
    assert np.array_equal(np.argsort(moved, axis=0), np.argsort(source, axis=0))
    assert np.all(np.isfinite(curve.transform(source * 3.0)))  # far beyond the knots


def test_intensity_curve_extrapolates_with_bounded_slopes():
    # The source platform floors its values at 5, the target's does not: the source's
    # lowest knots are nearly tied, and a new source array whose floor is 0.1 lower came out
    # 20 units from the old one (slope 406 beyond the end knot).  Slopes beyond the end
    # knots are now within [1/3, 3].
    rng = np.random.default_rng(1)
    profile = rng.uniform(4.0, 12.0, 400)
    source = np.maximum(profile + rng.normal(size=(60, 400)), 5.0)
    target = profile + rng.normal(size=(60, 400))
    X, _, sd = stack_domains(source, target)
    model = LatentGPA(random_state=0).fit(X, sample_domain=sd)
    assert model.intensity_curves_ is not None
    new = source[:1].copy()
    floored = source.min(0) == 5.0
    new[0, floored] = 4.9
    change = np.abs(model.transform(new) - model.transform(source[:1]))[0, floored]
    plain = LatentGPA(intensity_curve=None, random_state=0).fit(X, sample_domain=sd)
    plain_change = np.abs(plain.transform(new) - plain.transform(source[:1]))[0, floored]
    assert change.max() <= 3.0 * plain_change.max()
    curve = model.intensity_curves_[1]
    assert np.all(np.diff(curve.knots_source, axis=1) >= 0)
    assert np.all(np.diff(curve.knots_target, axis=1) >= 0)


def test_intensity_curves_follow_the_source_domains():
    # Two source domains, one with a curve; no pre-alignment to guess a row's domain, and
    # (each gene matched to the target by hand) no direction for the encoder.  The curve
    # goes on its own domain's rows only; without sample_domain the rows' domains are
    # unknown, which is said, not guessed.
    plain, _, target = _curve_pair(seed=0, curve=False)
    curved, _, _ = _curve_pair(seed=0, curve=True)

    def matched(rows):
        return (rows - rows.mean(0)) / rows.std(0) * target.std(0) + target.mean(0)

    X, _, sd = stack_domains([matched(plain), matched(curved)], target)
    model = LatentGPA(prealign=None).fit(X, sample_domain=sd)
    assert model.n_components_ == 0 and set(model.intensity_curves_) == {2}
    moved = model.transform(X, sample_domain=sd)
    np.testing.assert_array_equal(moved[sd == 1], X[sd == 1])
    np.testing.assert_array_equal(moved[sd < 0], X[sd < 0])
    assert np.abs(moved[sd == 2] - X[sd == 2]).max() > 0.1
    with pytest.raises(ValueError, match="sample_domain"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.transform(X[sd >= 0])
    # Per-sample factors change the genes' shapes too; once the flow has removed them,
    # no curve is left to find.
    distorted, _, target = _factor_pair(rank=2)
    X, _, sd = stack_domains(distorted, target)
    model = LatentGPA(random_state=0).fit(X, sample_domain=sd)
    assert model.n_components_ > 0 and model.intensity_curves_ is None


def test_latent_gpa_pickled_before_its_newer_parameters_keeps_working():
    import pickle

    distorted, _, target = _curve_pair(seed=2)
    X, _, sd = stack_domains(distorted, target)
    model = LatentGPA().fit(X, sample_domain=sd)
    state = model.__getstate__()
    for name in ("intensity_curve", "sample_alignment", "intensity_curves_", "sample_levels_"):
        state.pop(name)
    old = LatentGPA.__new__(LatentGPA)
    old.__setstate__(state)
    assert old.get_params()["intensity_curve"] is None
    assert old.get_params()["sample_alignment"] is None
    assert "intensity_curve=None" in repr(old)
    again = pickle.loads(pickle.dumps(old))
    np.testing.assert_allclose(again.transform(distorted[:5]), old.transform(distorted[:5]))


def _label_shift_pair(seed, n=40, d=60):
    """Two classes 3 apart along one axis, 70 % of class 0 in the source half and 30 % in
    the target half; the source gets a per-sample factor and gene-wise shifts."""
    rng = np.random.RandomState(seed)
    axis = rng.normal(size=d)
    axis /= np.linalg.norm(axis)

    def side(share):
        y = (rng.uniform(size=n) > share).astype(int)
        return rng.normal(size=(n, d)) + np.outer(3.0 * y, axis), y

    (truth, ys), (target, yt) = side(0.7), side(0.3)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    distorted = truth + rng.normal(size=(n, 1)) * 3.0 * u + rng.normal(size=d) * 0.5
    return distorted, ys, target, yt, truth


def test_labels_on_both_sides_run_one_flow(monkeypatch):
    from sklearn_gpa import latent

    def fit(seed, **params):
        distorted, ys, target, yt, truth = _label_shift_pair(seed)
        X, y, sd = stack_domains(distorted, target, ys, yt)
        model = LatentGPA(random_state=0, **params).fit(X, y, sample_domain=sd)
        return model, _recovery(model.transform(distorted, ys), distorted, truth), (distorted, ys)

    # One flow for both classes: transform ignores y (it would pick a class flow).
    model, _, (distorted, ys) = fit(0)
    assert model.n_components_ >= 1 and model.classes_ is None
    np.testing.assert_array_equal(model.transform(distorted), model.transform(distorted, ys))
    flow = GPATransporter(conditional=True, n_critic=10, standardize="common")
    assert fit(0, transporter=flow)[0].classes_ is not None
    # Flows per class (of 12-28 rows) sent rows farther from their own truth under the
    # label shift: 0.523 -> 0.563, 0.553 -> 0.583, 0.677 -> 0.746 of the distortion left.
    for seed in (1, 2, 3):
        one = fit(seed)[1]
        monkeypatch.setattr(latent, "CLASS_FLOWS", True)
        per_class = fit(seed)[1]
        monkeypatch.setattr(latent, "CLASS_FLOWS", False)
        assert one < per_class - 0.02
