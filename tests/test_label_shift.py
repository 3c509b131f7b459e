"""Integration when the two sides hold different mixes of classes (a label shift)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_gpa import GPATransporter, LatentGPA, MeanStdAdjuster
from sklearn_gpa.baselines import meanstd_map, mixture_shift
from sklearn_gpa.utils import stack_domains


def _label_shift_pair(seed=0, n=150, d=200, share_s=0.7, share_t=0.3, factor=0.0):
    """Two studies of one population, class 0 holding ``share_s`` of the source rows and
    ``share_t`` of the target rows; the source gets a per-gene affine batch effect and,
    with ``factor`` > 0, a per-sample factor with gene loadings.  Returns the distorted
    source, its truth, the target and both sides' labels."""
    rng = np.random.RandomState(seed)
    contrast = np.where(np.arange(d) < 40, 1.5, 0.0)  # class 1 is higher on 40 genes
    mixing = rng.normal(size=(3, d))

    def study(share):
        y = (rng.rand(n) >= share).astype(int)
        return y[:, None] * contrast + rng.normal(size=(n, 3)) @ mixing + rng.normal(size=(n, d)), y

    truth, ys = study(share_s)
    target, yt = study(share_t)
    distorted = truth * rng.lognormal(0.0, 0.2, d) + rng.normal(0.0, 1.0, d)
    distorted += factor * rng.normal(size=(n, 1)) @ rng.normal(size=(1, d))
    return distorted, truth, target, ys, yt


def _latent(**params):
    """LatentGPA with its default flow, seeded."""
    flow = GPATransporter(n_steps=1000, out_of_sample="auto", standardize="common", random_state=0)
    return LatentGPA(transporter=flow, **params)


def _recovery(corrected, distorted, truth):
    return np.sqrt(((corrected - truth) ** 2).mean() / ((distorted - truth) ** 2).mean())


def _accuracy(corrected, ys, target, yt):
    classifier = LogisticRegression(C=0.1, max_iter=2000).fit(target, yt)
    return balanced_accuracy_score(ys, classifier.predict(corrected))


def test_mixture_shift_estimates_the_source_mix_and_gives_it_back():
    distorted, truth, target, ys, yt = _label_shift_pair()
    a, b = meanstd_map(distorted, target, shrink=True)
    aligned = distorted * a + b
    shift, proportions = mixture_shift(aligned, target, yt)
    assert proportions == pytest.approx([np.mean(ys == 0), np.mean(ys == 1)], abs=0.08)
    # The moment match pulled the source's class-0 rows up along the class genes by about
    # (0.7 - 0.3) * 1.5 = 0.6; the shift takes most of that back.
    gap = (aligned - truth)[:, :40].mean()
    assert gap > 0.4
    assert abs((aligned + shift - truth)[:, :40].mean()) < 0.25 * gap
    assert _recovery(aligned + shift, distorted, truth) < 0.9 * _recovery(aligned, distorted, truth)
    assert _accuracy(aligned + shift, ys, target, yt) > _accuracy(aligned, ys, target, yt) + 0.05


def test_mixture_shift_leaves_the_same_mix_alone_and_needs_two_target_classes():
    distorted, truth, target, ys, yt = _label_shift_pair(share_s=0.5, share_t=0.5)
    a, b = meanstd_map(distorted, target, shrink=True)
    aligned = distorted * a + b
    shift, proportions = mixture_shift(aligned, target, yt)
    assert proportions == pytest.approx([0.5, 0.5], abs=0.1)
    assert np.sqrt(np.mean(shift**2)) < 0.1  # against a per-gene truth error of about 1
    # One known target class (the others -1): no contrast, no shift, the target's mix.
    one = np.where(yt == 0, 0, -1)
    shift, proportions = mixture_shift(aligned, target, one)
    assert not shift.any() and proportions.tolist() == [1.0]


def test_adjuster_recentres_only_with_target_labels_and_one_map():
    distorted, truth, target, ys, yt = _label_shift_pair()
    X, y, sd = stack_domains(distorted, target, np.full(len(ys), -1), yt)
    plain = MeanStdAdjuster(shrink=True).fit(X, y, sample_domain=sd)
    mixed = MeanStdAdjuster(shrink=True, recentre="mixture").fit(X, y, sample_domain=sd)
    np.testing.assert_array_equal(mixed.scale_, plain.scale_)
    assert np.abs(mixed.recentring_).max() > 0.1
    np.testing.assert_allclose(mixed.shift_, plain.shift_ + mixed.recentring_)
    moved = mixed.transform(distorted)
    assert _recovery(moved, distorted, truth) < 0.9 * _recovery(
        plain.transform(distorted), distorted, truth
    )
    # Without labels there is nothing to fit the mixture to; with labels on both sides the
    # maps are per class, which already keeps each side's mix.
    free = MeanStdAdjuster(shrink=True, recentre="mixture").fit(X, sample_domain=sd)
    assert not free.recentring_.any()
    X, y, sd = stack_domains(distorted, target, ys, yt)
    both = MeanStdAdjuster(recentre="mixture").fit(X, y, sample_domain=sd)
    assert both.classes_ is not None and not both.recentring_.any()


@pytest.mark.filterwarnings("ignore:Labels ignored")
@pytest.mark.parametrize("factor", [0.0, 2.0])
def test_latent_gpa_mixture_prealign_keeps_the_source_mix(factor):
    # factor=0: a per-gene effect, no flow runs (the pre-alignment is the result);
    # factor=2: a per-sample factor, the flow runs and residual="adjust" must keep the
    # recentring's off-latent part.
    distorted, truth, target, ys, yt = _label_shift_pair(factor=factor)
    X, y, sd = stack_domains(distorted, target, np.full(len(ys), -1), yt)
    out = {}
    for prealign in ("shrunk", "mixture"):
        model = _latent(prealign=prealign).fit(X, y, sample_domain=sd)
        out[prealign] = model.transform(distorted)
        assert (model.transporter_ is None) == (factor == 0.0)
    errors = {k: _recovery(v, distorted, truth) for k, v in out.items()}
    assert errors["mixture"] < 0.96 * errors["shrunk"]
    gaps = {k: abs((v - truth)[:, :40].mean()) for k, v in out.items()}
    assert gaps["mixture"] < 0.2 * gaps["shrunk"]
    accuracy = {k: _accuracy(v, ys, target, yt) for k, v in out.items()}
    assert accuracy["mixture"] > accuracy["shrunk"] + 0.1
    # Label-free, "mixture" has no classes to fit: the same as "shrunk".
    X, _, sd = stack_domains(distorted, target)
    free = _latent(prealign="mixture").fit(X, sample_domain=sd).transform(distorted)
    np.testing.assert_allclose(free, _latent().fit(X, sample_domain=sd).transform(distorted))


def test_bad_recentre_and_prealign_are_named():
    distorted, _, target, _, _ = _label_shift_pair(n=20, d=12)
    X, _, sd = stack_domains(distorted, target)
    with pytest.raises(InvalidParameterError, match="recentre"):
        MeanStdAdjuster(recentre="mnn").fit(X, sample_domain=sd)
    with pytest.raises(InvalidParameterError, match="prealign"):
        LatentGPA(prealign="mix").fit(X, sample_domain=sd)
