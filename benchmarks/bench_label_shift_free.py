"""Label-free remedies for a label shift, tried on the pre-alignment (issue 16).

Where two studies hold different shares of a class (GSE1992 41 % ER-, GSE4335 27 %), matching
whole-sample per-gene means moves every source row towards the other class; with the target's
labels, ``mixture_shift`` (``LatentGPA(prealign="mixture")``) estimates the source's own mix
and removes only the common offset.  This script measures label-free candidates for the same
job, each applied after the pre-alignment ``LatentGPA`` runs by default (per-sample levels where
they are off, then shrunk per-gene mean/std), without the flow:

* ``target clusters k``: ``mixture_shift`` with the target's classes replaced by a Gaussian
  mixture's k clusters (full covariance, 5 initialisations) of the target rows' first 5
  principal components (genes standardised);
* ``pooled clusters k``: the clusters of the source and target rows pooled (pre-aligned), the
  target rows' clusters passed to ``mixture_shift``;
* ``source clusters``: the roles swapped: the target rows fitted as a mixture of the
  pre-aligned source's 2 clusters plus an offset, and the source moved by minus that offset;
* ``source bimodal axis``: ``source clusters`` with the source's 2 clusters taken along the
  one of its first 5 principal components that is most bimodal (the largest BIC gain of a
  two-component over a one-component normal fit, equal spreads);
* ``joint gap mixture``: along the leading eigenvector of the covariance gap (source minus
  target, 10 pooled principal components; the direction a change of mix widens), both sides
  fitted by EM as two shared normals (shared means and spread), each side its own weights and
  the source one offset; the offset is removed where a free mix fits better than a common one
  (likelihood ratio, chi-square with 2 degrees of freedom, p < 0.01);
* ``joint gap mixture, widening test``: the same offset, removed only where the free mix fits
  better than one mix with each side its own spread (a per-sample batch factor widens the
  source along that direction too; both models have six parameters);
* ``keep span 3``: the per-gene shift is kept where it lies in the span of the 3 leading
  within-study principal components (rows centred per side; a change of mix moves the means
  along the biology both studies vary in) and removed elsewhere.

On the real pairs, label-free ``LatentGPA`` (``bench_known_truth.py``'s flow settings,
``random_state=0``) is then run with the recentring of the candidates that reach the issue's
bar on GSE1992 -> GSE4335 and of the semi-labelled mixture (``prealign="mixture"`` with
``mixture_shift`` patched to return the candidate's shift; the encoder and the flow see no
label): whether a pre-alignment that keeps the source's mix survives the flow (a zero shift is
``bench_known_truth.py``'s label-free ``LatentGPA``).

References: raw source, label-free mean/std (``MeanStdAdjuster()``, the issue's bar), the
default pre-alignment, and ``mixture_shift`` with the target's ER labels (semi-labelled).
Cells: the stratified splits 0 and 1 of ``bench_known_truth.py`` (4 batch effects x 3
studies), its label-shift cells (3 effects x 3 studies) and the six real pairs.  Scores:
per-sample recovery, RMSE(moved - truth) / RMSE(distorted - truth) (lower is better), and the
balanced accuracy of ER predicted by a target-trained logistic regression (label-free: no
candidate sees a source label; the semi-labelled one sees the target's).

Run: ``python benchmarks/bench_label_shift_free.py`` (about 10 minutes; needs ``survset``).
Writes ``benchmarks/results/bench_label_shift_free.{json,md}``.
"""

from __future__ import annotations

import sys
import time
import warnings
from unittest import mock

import _common
import numpy as np
from _studies import ER_STUDIES, er_study, open_studies, real_pair
from bench_known_truth import (
    EFFECTS,
    REAL_PAIRS,
    SHIFT_EFFECTS,
    meanstd,
    split_cell,
    target_classifier,
)
from scipy import stats
from sklearn.metrics import balanced_accuracy_score
from sklearn.mixture import GaussianMixture

from sklearn_gpa._sample_levels import SampleLevels
from sklearn_gpa.baselines import meanstd_map, mixture_shift
from sklearn_gpa.utils import stack_domains

N_PCS = 5
GATE = 0.01
BAR = ("raw", "mean/std")
# Pre-alignments the label-free flow is run from on the real pairs.
FLOWN = (
    "default pre-alignment",
    "source bimodal axis",
    "joint gap mixture",
    "semi-labelled mixture (ref.)",
)


def _unit(rows):
    """Per-gene spreads of ``rows``, 1 for a constant gene."""
    spread = rows.std(0)
    return np.where(spread > 0, spread, 1.0)


def _axes(rows, n):
    """The ``n`` leading principal axes of ``rows`` (already centred)."""
    return np.linalg.svd(rows, full_matrices=False)[2][:n]


def clusters(rows, k):
    """Gaussian-mixture clusters of ``rows``' first ``N_PCS`` principal components."""
    z = (rows - rows.mean(0)) / _unit(rows)
    codes = z @ _axes(z, N_PCS).T
    return GaussianMixture(k, n_init=5, random_state=0).fit(codes).predict(codes)


def bimodal_axis_clusters(rows):
    """Two clusters along the most bimodal of ``rows``' first ``N_PCS`` principal components."""
    z = (rows - rows.mean(0)) / _unit(rows)
    best = (-np.inf, None)
    for axis in _axes(z, N_PCS):
        scores = (z @ axis)[:, None]
        two = GaussianMixture(2, covariance_type="tied", n_init=5, random_state=0).fit(scores)
        gain = GaussianMixture(1).fit(scores).bic(scores) - two.bic(scores)
        if gain > best[0]:
            best = (gain, two.predict(scores))
    return best[1]


def prealigned(cell):
    """LatentGPA's default pre-alignment of the source rows, and the rows before its per-gene
    map (after the per-sample levels, where those ran)."""
    rows = cell["Xs"]
    levels = SampleLevels.fit(rows, cell["Xt"])
    if levels is not None:
        rows = levels.transform(rows)
    a, b = meanstd_map(rows, cell["Xt"], shrink=True)
    return rows * a + b, rows


def _normal_log(x, mean, sd):
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)


def _joint_fit(s, t, free, own_spreads=False, n_iter=500):
    """EM for s ~ p_s N(m0 + b, sd_s) + (1 - p_s) N(m1 + b, sd_s), t ~ p_t N(m0, sd_t) +
    (1 - p_t) N(m1, sd_t).  ``free``: p_s and p_t apart (else one mix); ``own_spreads``: sd_s
    and sd_t apart (else one spread).  Best of five starting mixes: (log-likelihood, b)."""
    best = (-np.inf, 0.0)
    for start_s, start_t in ((0.5, 0.5), (0.2, 0.2), (0.8, 0.8), (0.3, 0.6), (0.6, 0.3)):
        p_s, p_t = (start_s, start_t) if free else (start_t, start_t)
        m0, m1 = np.quantile(t, [0.25, 0.75])
        sd_s = sd_t = t.std()
        b, previous = s.mean() - t.mean(), -np.inf
        for _ in range(n_iter):
            joint_s = np.stack(
                [
                    np.log(p_s) + _normal_log(s, m0 + b, sd_s),
                    np.log(1 - p_s) + _normal_log(s, m1 + b, sd_s),
                ]
            )
            joint_t = np.stack(
                [
                    np.log(p_t) + _normal_log(t, m0, sd_t),
                    np.log(1 - p_t) + _normal_log(t, m1, sd_t),
                ]
            )
            total_s, total_t = np.logaddexp(*joint_s), np.logaddexp(*joint_t)
            log_like = total_s.sum() + total_t.sum()
            if log_like - previous < 1e-10 * abs(log_like):
                break
            previous = log_like
            post_s, post_t = np.exp(joint_s - total_s), np.exp(joint_t - total_t)
            if free:
                p_s, p_t = post_s[0].mean(), post_t[0].mean()
            else:
                p_s = p_t = (post_s[0].sum() + post_t[0].sum()) / (len(s) + len(t))
            p_s, p_t = np.clip([p_s, p_t], 1e-3, 1 - 1e-3)
            w_s, w_t = post_s / sd_s**2, post_t / sd_t**2
            for _ in range(3):  # means and offset by alternating weighted least squares
                m0 = (w_s[0] @ (s - b) + w_t[0] @ t) / (w_s[0].sum() + w_t[0].sum())
                m1 = (w_s[1] @ (s - b) + w_t[1] @ t) / (w_s[1].sum() + w_t[1].sum())
                b = (post_s[0] @ (s - m0) + post_s[1] @ (s - m1)) / len(s)
            squares_s = post_s[0] @ (s - m0 - b) ** 2 + post_s[1] @ (s - m1 - b) ** 2
            squares_t = post_t[0] @ (t - m0) ** 2 + post_t[1] @ (t - m1) ** 2
            if own_spreads:
                sd_s, sd_t = np.sqrt(squares_s / len(s)), np.sqrt(squares_t / len(t))
            else:
                sd_s = sd_t = np.sqrt((squares_s + squares_t) / (len(s) + len(t)))
            sd_s, sd_t = max(sd_s, 1e-6), max(sd_t, 1e-6)
        if log_like > best[0]:
            best = (log_like, b)
    return best


def joint_gap_mixture(aligned, cell):
    """The two ``joint gap mixture`` candidates: (tested against one mix, against widening)."""
    target = cell["Xt"]
    unit = _unit(target)
    rows_s, rows_t = aligned / unit, target / unit
    centre = np.vstack([rows_s, rows_t]).mean(0)
    axes = _axes(np.vstack([rows_s, rows_t]) - centre, 10)
    codes_s, codes_t = (rows_s - centre) @ axes.T, (rows_t - centre) @ axes.T
    values, vectors = np.linalg.eigh(np.cov(codes_s.T) - np.cov(codes_t.T))
    direction = vectors[:, np.argmax(np.abs(values))]
    s, t = codes_s @ direction, codes_t @ direction
    free, offset = _joint_fit(s, t, free=True)
    common, _ = _joint_fit(s, t, free=False)
    widened, _ = _joint_fit(s, t, free=False, own_spreads=True)
    moved = aligned - offset * (direction @ axes) * unit
    one_mix = moved if stats.chi2.sf(2 * (free - common), 2) < GATE else aligned
    return one_mix, moved if free > widened else aligned


def keep_span(aligned, before, cell, n=3):
    target = cell["Xt"]
    unit = _unit(target)
    rows_s, rows_t = aligned / unit, target / unit
    axes = _axes(np.vstack([rows_s - rows_s.mean(0), rows_t - rows_t.mean(0)]), n)
    gap = (before.mean(0) - target.mean(0)) / unit
    return aligned + (gap @ axes.T) @ axes * unit


def candidates(cell):
    """Every candidate's moved source rows, by name."""
    aligned, before = prealigned(cell)
    Xt = cell["Xt"]
    out = {
        "raw": cell["Xs"],
        "mean/std": meanstd(cell),
        "default pre-alignment": aligned,
        "semi-labelled mixture (ref.)": aligned + mixture_shift(aligned, Xt, cell["yt"])[0],
    }
    for k in (2, 3):
        out[f"target clusters {k}"] = aligned + mixture_shift(aligned, Xt, clusters(Xt, k))[0]
        pooled = clusters(np.vstack([aligned, Xt]), k)[len(aligned) :]
        out[f"pooled clusters {k}"] = aligned + mixture_shift(aligned, Xt, pooled)[0]
    out["source clusters 2"] = aligned - mixture_shift(Xt, aligned, clusters(aligned, 2))[0]
    bimodal = bimodal_axis_clusters(aligned)
    out["source bimodal axis"] = aligned - mixture_shift(Xt, aligned, bimodal)[0]
    out["joint gap mixture"], out["joint gap mixture, widening test"] = joint_gap_mixture(
        aligned, cell
    )
    out["keep span 3"] = keep_span(aligned, before, cell)
    return out


def flown(cell, shift, classifier):
    """ER balanced accuracy of ``LatentGPA(prealign="mixture")`` (``bench_known_truth.py``'s
    flow settings: ``_common.latent_gpa(random_state=0)``) whose
    recentring is ``shift`` (``mixture_shift`` patched to return it), the target given one
    class only: the encoder and the flow see no class, and the residual step keeps the
    recentring's off-latent part as it does for the semi-labelled mixture."""
    ys = np.full(len(cell["Xs"]), -1)
    X, y, domains = stack_domains(cell["Xs"], cell["Xt"], ys, np.zeros(len(cell["Xt"]), int))
    model = _common.latent_gpa(prealign="mixture", random_state=0)
    with (
        warnings.catch_warnings(),
        mock.patch("sklearn_gpa.baselines.mixture_shift", lambda *_: (shift, None)),
    ):
        warnings.simplefilter("ignore")
        model.fit(X, y, sample_domain=domains)
    moved = model.transform(cell["Xs"], sample_domain=np.zeros(len(ys), dtype=int))
    return balanced_accuracy_score(cell["ys"], classifier.predict(moved))


def cells(studies):
    for study in ER_STUDIES:
        X, y, _ = er_study(studies, study)
        for split in (0, 1):
            for effect in EFFECTS:
                yield (
                    "stratified",
                    f"{study} {effect} {split}",
                    split_cell(X, y, study, effect, split),
                )
        for effect in SHIFT_EFFECTS:
            cell = split_cell(X, y, study, effect, 0, label_shift=True)
            yield "label shift", f"{study} {effect}", cell
    for source, target in REAL_PAIRS:
        yield "real pairs", f"{source} -> {target}", real_pair(studies, source, target)


def main():
    studies = open_studies("bench_label_shift_free")
    if studies is None:
        return 0
    start = time.perf_counter()
    rows, flows = [], []
    for group, name, cell in cells(studies):
        classifier = target_classifier(cell["Xt"], cell["yt"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            moved = candidates(cell)
        for method, rows_moved in moved.items():
            row = {"group": group, "cell": name, "method": method}
            row["accuracy"] = float(
                balanced_accuracy_score(cell["ys"], classifier.predict(rows_moved))
            )
            if cell["truth"] is not None:
                error = np.mean((rows_moved - cell["truth"]) ** 2)
                row["recovery"] = float(np.sqrt(error / np.mean((cell["Xs"] - cell["truth"]) ** 2)))
            rows.append(row)
        print(
            name,
            " ".join(f"{r['method']}: {r['accuracy']:.3f}" for r in rows[-len(moved) :]),
            flush=True,
        )
        if group == "real pairs":
            aligned = moved["default pre-alignment"]
            shifts = [(moved[m] - aligned).mean(0) for m in FLOWN]
            flows.append([name] + [f"{flown(cell, d, classifier):.3f}" for d in shifts])
            print(name, "after the flow:", " ".join(flows[-1][1:]), flush=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = []
    for method in methods:
        entry = {"method": method}
        for group in ("stratified", "label shift", "real pairs"):
            picked = [r for r in rows if r["method"] == method and r["group"] == group]
            entry[f"{group} accuracy"] = float(np.mean([r["accuracy"] for r in picked]))
            if group != "real pairs":
                entry[f"{group} recovery"] = float(np.mean([r["recovery"] for r in picked]))
        real = {
            r["cell"]: r["accuracy"]
            for r in rows
            if r["method"] == method and r["group"] == "real pairs"
        }
        # The bar: at least the raw source's and label-free mean/std's accuracy.
        bar = {
            pair: max(r["accuracy"] for r in rows if r["cell"] == pair and r["method"] in BAR)
            for pair in real
        }
        entry["pairs at the bar"] = sum(real[p] >= bar[p] for p in real)
        summary.append(entry)
    total = time.perf_counter() - start
    header = [
        "method",
        "stratified: recovery",
        "ER acc.",
        "label shift: recovery",
        "ER acc.",
        "real pairs: ER acc.",
        "pairs >= raw and mean/std",
    ]
    table = [
        [
            e["method"],
            f"{e['stratified recovery']:.3f}",
            f"{e['stratified accuracy']:.3f}",
            f"{e['label shift recovery']:.3f}",
            f"{e['label shift accuracy']:.3f}",
            f"{e['real pairs accuracy']:.3f}",
            f"{e['pairs at the bar']} / 6",
        ]
        for e in summary
    ]
    pairs = list(dict.fromkeys(r["cell"] for r in rows if r["group"] == "real pairs"))
    per_pair = [
        [method]
        + [
            f"{next(r['accuracy'] for r in rows if r['method'] == method and r['cell'] == p):.3f}"
            for p in pairs
        ]
        for method in methods
    ]
    text = [
        f"`python benchmarks/bench_label_shift_free.py` ({_common.now()}, "
        f"{_common.machine_line()}), total {total:.0f} s. Pre-alignment only (no flow). Means "
        "over 24 stratified cells (splits 0-1), 9 label-shift cells and 6 real pairs; recovery "
        "lower is better; ER acc.: balanced accuracy of a target-trained classifier.",
        "",
        _common.markdown_table(header, table),
        "",
        "Real pairs, ER balanced accuracy:",
        "",
        _common.markdown_table(["method"] + pairs, per_pair),
        "",
        "Real pairs, ER balanced accuracy of label-free LatentGPA with each recentring (the "
        "first column is the default):",
        "",
        _common.markdown_table(["pair", *FLOWN], flows),
    ]
    print("\n" + "\n".join(text))
    _common.write_results(
        "bench_label_shift_free",
        {"summary": summary, "rows": rows, "flows": flows, "seconds": total},
        "\n".join(text),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
