"""GPATransporter's pre-alignment, ``prealign="auto"`` against ``None``, with every other default.

Two kinds of integration, each run with both settings in the same process:

* **four wells**: target = four Gaussian wells (sd 0.5, 8 apart; a square or a line), 300
  rows; source = a blob (sd 0.5) a few well spacings away, 300 rows (the placements of
  ``bench_stopping.py --wells``).  Scores: share of the moved rows within 1.5 of a well,
  the smallest well's share, the stop reason and step (the checker's criterion: at least
  0.9 near a well, every well at least 0.15, and the fit stopping on its own);
* **mixed units, known truth**: each table of ``bench_generation.py`` split in halves
  (stratified); the source half gets a per-feature batch effect, either affine (scale
  U(0.7, 1.3), shift N(0, 0.5) target sds), a monotone curve (a tanh bend of up to 0.6
  sd, then a shift) or a convex one (``expm1(0.6 z) / 0.6`` of the standardised value, then
  a shift, on features whose rows stay within 5 sds; affine on the others), so every source
  row's batch-free value is known.  Labelled
  (class-conditional flows) and label-free.  Scores: per-sample recovery,
  RMSE(moved - truth) / RMSE(distorted - truth) in target sds (lower is better, 0 is
  the truth), and the balanced accuracy of a 200-tree forest trained on the target half
  on the moved rows, minus its accuracy on the raw (distorted) rows.

``--evidence``: the mixed-unit tables only, with no effect too (two halves of one table:
the truth is the raw rows, and the score is the rows' RMS move in target sds), 3 seeds,
``prealign="auto"`` as it is and mapping every source (``map_beyond_noise`` off, as before
2026-12-07: a source that is a fresh sample of its target got its noise's map).

``--turned``: instead, four wells on a line turned 0-90 degrees (sd 0.5, 8 apart, 300 rows)
and a blob at (-25, 25), 4 seeds, with ``prealign="auto"`` as it is and with its covariance
map switched off (``feature-wise``: every map per feature, as before 2026-12-07).

``--start-floor``: as ``--evidence``, on those tables and seven KEEL tables with heavy tails
or sparse counts (shuttle_2_vs_5, hypothyroid, kddcup land vs portsweep, page_blocks0,
abalone9_18, yeast1, winequality_red_4; at most ``MAX_ROWS`` rows, stratified), the first
check of integration as it is (against the pooled rows' floors too) and against the target's
floors alone (``stopping.START_POOLED`` off, as before 2026-12-07).

``--codes``: as ``--evidence``, on ten KEEL tables with flags and categories (australian,
crx, saheart, hepatitis, cleveland_0_vs_4, mammographic, dermatology_6, ecoli1, yeast1,
appendicitis), the effects (and ``skew``: ``expm1(a z) / a`` of every feature, ``a`` =
+-(0.3 to 0.6), then a shift) on the features of more than 10 values only, integration
giving codes (few-valued features whose source values all are target values) back as they
were (as it is) and moving and snapping them (``_fitted_flow.KEEP_CODES`` off, as before
2026-12-07).  Errors are in target sds (the table's sd where the target half is constant).

``--feature-maps``: as ``--evidence``, the effects on a random third of the features only,
on the mixed-unit tables and four KEEL tables (kc1, pc1, yeast1, australian): where the
sides differ, each feature's map only where its own statistics show a sign of an effect
(as it is) and every feature's map (``_fitted_flow.MAP_FEATURE_P`` None, as before
2026-12-07).

``--odd-units``: as ``--evidence``, on tables whose features mostly share a unit with a few
in another (KEEL kddcup land vs portsweep: byte counts beside 60 rates and flags;
dermatology_6: an age beside 33 scores; the SurvSet gene studies nki70, GSE1992, GSE4335: an
age beside their 300 genes of largest variance, ER status as the label), ``standardize="auto"``
scaling those few on their own (as it is) or giving all one common scale
(``_scaling.SEPARATE_ODD_UNITS`` off, as before 2026-12-07).

Run: ``python benchmarks/bench_prealign.py [--quick] [--turned | --evidence | --start-floor |
--codes | --feature-maps | --odd-units]``
(``--quick``: 1 seed, 4 tables).  Writes
``benchmarks/results/bench_prealign[_turned|_evidence|_start_floor|_codes|_feature_maps|_odd_units][_quick].{json,md}``.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager

import _common
import _studies
import numpy as np
from bench_generation import TABULAR, load_tabular
from bench_stopping import LINE, PLACEMENTS, placement_problem, well_scores
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split

from sklearn_gpa import GPATransporter, _fitted_flow, _scaling
from sklearn_gpa._discrete import MAX_LEVELS, n_values
from sklearn_gpa._engine import stopping
from sklearn_gpa.utils import stack_domains

SETTINGS = {"auto": {}, "None": {"prealign": None}}
EFFECTS = ("affine", "curve", "convex")
# --evidence: prealign="auto" as it is, and mapping every source (map_beyond_noise off).
EVIDENCE_SETTINGS = {"auto": {}, "auto, every map": {"evidence_alpha": 1.0}}


# --start-floor: the first check of integration against the pooled rows' floors too (as it
# is), and against the target's floors alone (as before 2026-12-07) ...
START_FLOOR_SETTINGS = {"pooled floors": {}, "target floors": {"start_pooled": False}}
# ... on the mixed-unit tables and on KEEL tables with heavy tails or sparse counts.
START_FLOOR_TABLES = (
    *TABULAR,
    "shuttle_2_vs_5",
    "hypothyroid",
    "kddcup_land_vs_portsweep",
    "page_blocks0",
    "abalone9_18",
    "yeast1",
    "winequality_red_4",
)
# --codes: integration gives codes back as they were (as it is), and moves and snaps them
# (as before 2026-12-07), on KEEL tables with flags and categories; the effects leave the
# few-valued features alone.
CODES_SETTINGS = {"codes kept": {}, "codes moved": {"keep_codes": False}}
CODES_TABLES = (
    "australian",
    "crx",
    "saheart",
    "hepatitis",
    "cleveland_0_vs_4",
    "mammographic",
    "dermatology_6",
    "ecoli1",
    "yeast1",
    "appendicitis",
)
# --feature-maps: where the sides differ, each feature's map only with a sign of an effect
# of its own (as it is) or every feature's (as before 2026-12-07); effects on a random
# third of the features.
FEATURE_MAP_SETTINGS = {"feature maps": {}, "every map": {"feature_p": None}}
FEATURE_MAP_TABLES = (*TABULAR, "kc1", "pc1", "yeast1", "australian")
# --odd-units: standardize="auto" on tables whose features mostly share a unit (a common
# scale) with a few in another: each of those scaled on its own (as it is), or one scale for
# all (``_scaling.SEPARATE_ODD_UNITS`` off, as before 2026-12-07).  "survset:NAME": a gene
# study's patients with a known ER status, its age and the GENES genes of largest variance.
ODD_UNIT_SETTINGS = {"odd units apart": {}, "one common scale": {"odd_units": False}}
ODD_UNIT_TABLES = (
    "kddcup_land_vs_portsweep",
    "dermatology_6",
    "survset:nki70",
    "survset:gse1992",
    "survset:gse4335",
)
GENES = 300
# The comparisons of two settings on tables with a known truth, by flag: the tables, the
# settings, the effects, the features the effects leave alone (``mixed_units``) and help.
COMPARISONS = {
    "evidence": (
        TABULAR,
        EVIDENCE_SETTINGS,
        ("none", *EFFECTS),
        None,
        "sources mapped only on evidence: no effect too",
    ),
    "start-floor": (
        START_FLOOR_TABLES,
        START_FLOOR_SETTINGS,
        ("none", *EFFECTS),
        None,
        "the first check against the pooled rows' floors too, and without: no effect too",
    ),
    "codes": (
        CODES_TABLES,
        CODES_SETTINGS,
        ("none", *EFFECTS, "skew"),
        "few-valued",
        "codes kept or moved, on tables with categories",
    ),
    "feature-maps": (
        FEATURE_MAP_TABLES,
        FEATURE_MAP_SETTINGS,
        EFFECTS,
        "two thirds",
        "maps only for features with a sign of an effect, or every map; partial effects",
    ),
    "odd-units": (
        ODD_UNIT_TABLES,
        ODD_UNIT_SETTINGS,
        ("none", *EFFECTS),
        None,
        "features in another unit than the rest scaled on their own, or one common scale",
    ),
}
# Larger tables are subsampled (stratified) to this many rows before the halves.
MAX_ROWS = 1000
# The module constants a setting may switch: (module, name), by the setting's key.
CONSTANTS = {
    "evidence_alpha": (_fitted_flow, "MAP_EVIDENCE_ALPHA"),
    "start_pooled": (stopping, "START_POOLED"),
    "keep_codes": (_fitted_flow, "KEEP_CODES"),
    "feature_p": (_fitted_flow, "MAP_FEATURE_P"),
    "odd_units": (_scaling, "SEPARATE_ODD_UNITS"),
}


@contextmanager
def constants(params):
    """Pops the keys of ``CONSTANTS`` from ``params`` and sets those module constants."""
    kept = {key: getattr(*CONSTANTS[key]) for key in CONSTANTS if key in params}
    for key in kept:
        setattr(*CONSTANTS[key], params.pop(key))
    try:
        yield
    finally:
        for key, value in kept.items():
            setattr(*CONSTANTS[key], value)


def wells(seeds):
    rows = []
    for name, (centres, blob) in PLACEMENTS.items():
        for seed in seeds:
            X, domain = placement_problem(centres, blob, seed)
            for setting, params in SETTINGS.items():
                start = time.perf_counter()
                gpa = GPATransporter(random_state=seed, **params)
                moved = gpa.fit_transform(X, sample_domain=domain)[domain >= 0]
                rows.append(well_row(f"{name}, seed {seed}", setting, gpa, moved, centres, start))
    return rows


def well_row(problem, setting, gpa, moved, centres, start):
    """One row of the wells table (the checker's criterion), printed."""
    near, smallest = well_scores(moved, centres)
    row = {
        "problem": problem,
        "prealign": setting,
        "near_well": near,
        "smallest_well": smallest,
        "stop_reason": gpa.stop_reason_,
        "steps": int(gpa.n_steps_),
        "met": bool(near >= 0.9 and smallest >= 0.15) and gpa.stop_reason_ == "converged",
        "seconds": time.perf_counter() - start,
    }
    print(_common.format_row(row, WELL_COLUMNS), flush=True)
    return row


TURNS = (0, 15, 30, 45, 60, 90)


def turned_lines(seeds):
    """The wells criterion on lines turned by ``TURNS`` degrees, with and without the
    covariance map of ``prealign="auto"``."""
    from sklearn_gpa import _fitted_flow

    rows = []
    for degrees in TURNS:
        angle = np.deg2rad(degrees)
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        centres = LINE @ turn.T
        for seed in seeds:
            X, domain = placement_problem(centres, (-25.0, 25.0), seed)
            for setting in ("auto", "feature-wise"):
                covariance_map = _fitted_flow.covariance_map
                if setting == "feature-wise":
                    _fitted_flow.covariance_map = lambda *rows: None
                try:
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        gpa = GPATransporter(random_state=seed)
                        moved = gpa.fit_transform(X, sample_domain=domain)[domain >= 0]
                finally:
                    _fitted_flow.covariance_map = covariance_map
                problem = f"line turned {degrees} degrees, seed {seed}"
                rows.append(well_row(problem, setting, gpa, moved, centres, start))
    return rows


def turned_summary(rows):
    lines = ["| setting | criterion met | near a well (min) | steps (median) |"]
    lines.append("|---|---:|---:|---:|")
    for setting in ("auto", "feature-wise"):
        chosen = [r for r in rows if r["prealign"] == setting]
        lines.append(
            f"| {setting} | {sum(r['met'] for r in chosen)} / {len(chosen)} | "
            f"{np.mean([r['near_well'] for r in chosen]):.2f} "
            f"({min(r['near_well'] for r in chosen):.2f}) | "
            f"{np.median([r['steps'] for r in chosen]):.0f} |"
        )
    return "\n".join(lines)


def distort(Xs, Xt, effect, rng, codes=None, partial=False):
    """The source half with a per-feature batch effect in target sds (none: as it is);
    the features of the mask ``codes`` are left as they are, and with ``partial`` all but
    a random third of the features."""
    if codes is not None or partial:
        distorted = distort(Xs, Xt, effect, rng)
        if partial:
            codes = np.random.RandomState(rng.randint(1 << 30)).rand(Xs.shape[1]) >= 1 / 3
        return np.where(codes, Xs, distorted)
    if effect == "none":
        return Xs.copy()
    mean, sd = Xt.mean(0), Xt.std(0) + 1e-12
    shift = rng.normal(0.0, 0.5, Xs.shape[1])
    if effect == "affine":
        return Xs * rng.uniform(0.7, 1.3, Xs.shape[1]) + shift * sd
    z = (Xs - mean) / sd
    if effect == "convex":
        # exp(0.6 z): a tail the batch effect makes, on the features whose rows stay within
        # 5 sds (on a 50-sd row it is e^30); the others get the affine effect.
        mild = np.all(np.abs((np.vstack([Xs, Xt]) - mean) / sd) <= 5, axis=0)
        bent = mean + sd * (np.expm1(0.6 * z) / 0.6 + shift)
        return np.where(mild, bent, Xs * rng.uniform(0.7, 1.3, Xs.shape[1]) + shift * sd)
    if effect == "skew":
        # exp(a z) of every feature, a = +-(0.3 to 0.6): a tail the batch effect makes or
        # squeezes, far out on a heavy-tailed feature (--codes).
        bend = rng.choice([-1.0, 1.0], Xs.shape[1]) * rng.uniform(0.3, 0.6, Xs.shape[1])
        return mean + sd * (np.expm1(bend * z) / bend + shift)
    bend = rng.uniform(-0.6, 0.6, Xs.shape[1])
    return mean + sd * (z + bend * np.tanh(z) + shift)


def load_table(name, studies=None):
    """A table of ``bench_generation``, or "survset:NAME": a gene study's rows with a known
    ER status, its age column and its ``GENES`` genes of largest variance (ER labels)."""
    if not name.startswith("survset:"):
        return load_tabular(name)
    study = name[len("survset:") :]
    frame = (studies or _studies.Studies())(study)
    age = next(c for c in frame.columns if c.lower() == "num_age")
    genes = [c for c in _studies.gene_symbols(study, frame).values() if c != age]
    X = frame[[age, *genes]].to_numpy(float)
    y = _studies.er_labels(study, frame)
    keep = np.isfinite(X).all(1) & (y >= 0)
    X, y = X[keep], y[keep]
    top = np.argsort(-X[:, 1:].var(0), kind="stable")[:GENES] + 1
    return X[:, [0, *top]], y


def mixed_units(names, seeds, effects=EFFECTS, settings=SETTINGS, leave=None):
    """Per table, seed, effect, labels and setting, a fit's recovery and accuracy gain;
    ``leave``: the features the effects leave alone, None, "few-valued" (at most
    ``MAX_LEVELS`` values) or "two thirds" (at random)."""
    rows = []
    for name in names:
        table_X, table_y = load_table(name)
        for seed in seeds:
            X, y = table_X, table_y
            if len(X) > MAX_ROWS:  # KEEL's larger tables (--start-floor)
                X, _, y, _ = train_test_split(
                    X, y, train_size=MAX_ROWS, stratify=y, random_state=seed
                )
            Xs, Xt, ys, yt = train_test_split(X, y, train_size=0.5, stratify=y, random_state=seed)
            # Target sds; the table's where the target half is constant (a rare category).
            sd = np.where(Xt.std(0) > 0, Xt.std(0), X.std(0)) + 1e-12
            forest = RandomForestClassifier(200, random_state=seed, n_jobs=1).fit(Xt, yt)
            # --codes: the effect leaves few-valued features (flags, categories) alone.
            codes = n_values(X) <= MAX_LEVELS if leave == "few-valued" else None
            partial = leave == "two thirds"
            for effect in effects:
                distorted = distort(Xs, Xt, effect, np.random.RandomState(seed), codes, partial)
                raw_error = np.sqrt(np.mean(((distorted - Xs) / sd) ** 2))
                raw_accuracy = balanced_accuracy_score(ys, forest.predict(distorted))
                for labels in ("labelled", "label-free"):
                    given = (ys, yt) if labels == "labelled" else (None, None)
                    X_all, y_all, domain = stack_domains(distorted, Xt, *given)
                    for setting, params in settings.items():
                        params = dict(params)
                        start = time.perf_counter()
                        with warnings.catch_warnings(), constants(params):
                            warnings.simplefilter("ignore")
                            gpa = GPATransporter(random_state=seed, **params)
                            moved = gpa.fit_transform(X_all, y_all, sample_domain=domain)
                        moved = moved[domain >= 0]
                        error = np.sqrt(np.mean(((moved - Xs) / sd) ** 2))
                        rows.append(
                            {
                                "problem": f"{name}, seed {seed}, {effect}, {labels}",
                                "effect": effect,
                                "labels": labels,
                                "prealign": setting,
                                # No effect: the rows' RMS move in target sds (0 is the truth).
                                "recovery": error / raw_error if raw_error > 0 else error,
                                "accuracy_gain": balanced_accuracy_score(ys, forest.predict(moved))
                                - raw_accuracy,
                                "steps": int(gpa.n_steps_),
                                "seconds": time.perf_counter() - start,
                            }
                        )
                        print(_common.format_row(rows[-1], MIXED_COLUMNS), flush=True)
    return rows


WELL_COLUMNS = [
    ("problem", "problem", None),
    ("prealign", "prealign", None),
    ("near a well", "near_well", "{:.2f}"),
    ("smallest well", "smallest_well", "{:.2f}"),
    ("stop", "stop_reason", None),
    ("steps", "steps", "{}"),
    ("criterion met", "met", None),
    ("seconds", "seconds", "{:.1f}"),
]
MIXED_COLUMNS = [
    ("problem", "problem", None),
    ("prealign", "prealign", None),
    ("recovery", "recovery", "{:.2f}"),
    ("accuracy - raw", "accuracy_gain", "{:+.3f}"),
    ("steps", "steps", "{}"),
    ("seconds", "seconds", "{:.1f}"),
]


def summary(well_rows, mixed_rows):
    lines = ["| setting | wells: criterion met | near a well (min) | steps (median) |"]
    lines.append("|---|---:|---:|---:|")
    for setting in SETTINGS:
        rows = [r for r in well_rows if r["prealign"] == setting]
        lines.append(
            f"| prealign={setting} | {sum(r['met'] for r in rows)} / {len(rows)} | "
            f"{np.mean([r['near_well'] for r in rows]):.2f} "
            f"({min(r['near_well'] for r in rows):.2f}) | "
            f"{np.median([r['steps'] for r in rows]):.0f} |"
        )
    lines += ["", "| labels | setting | recovery mean (max) | accuracy - raw mean (min) |"]
    lines.append("|---|---|---:|---:|")
    for labels in ("labelled", "label-free"):
        for setting in SETTINGS:
            rows = [r for r in mixed_rows if r["prealign"] == setting and r["labels"] == labels]
            recovery = [r["recovery"] for r in rows]
            gain = [r["accuracy_gain"] for r in rows]
            lines.append(
                f"| {labels} | prealign={setting} | {np.mean(recovery):.2f} "
                f"({max(recovery):.2f}) | {np.mean(gain):+.3f} ({min(gain):+.3f}) |"
            )
    return "\n".join(lines)


def evidence_summary(rows, settings=EVIDENCE_SETTINGS):
    """Per effect, labels and setting: recovery (no effect: the rows' RMS move in target
    sds), the forest's accuracy on the moved rows minus on the raw ones, cells below raw."""
    lines = [
        "| effect | labels | setting | recovery or move: mean (max) | "
        "accuracy - raw: mean (min) | cells below raw |"
    ]
    lines.append("|---|---|---|---:|---:|---:|")
    for effect in dict.fromkeys(row["effect"] for row in rows):
        for labels in ("labelled", "label-free"):
            for setting in settings:
                cell = [
                    r
                    for r in rows
                    if (r["effect"], r["labels"], r["prealign"]) == (effect, labels, setting)
                ]
                recovery = [r["recovery"] for r in cell]
                gain = [r["accuracy_gain"] for r in cell]
                lines.append(
                    f"| {effect} | {labels} | {setting} | {np.mean(recovery):.3f} "
                    f"({max(recovery):.3f}) | {np.mean(gain):+.3f} ({min(gain):+.3f}) | "
                    f"{sum(g < 0 for g in gain)} / {len(gain)} |"
                )
    return "\n".join(lines)


def main():
    parser = _common.parser(__doc__, quick="1 seed, 4 tables")
    parser.add_argument("--turned", action="store_true", help="wells on turned lines only")
    for name, (*_, help_text) in COMPARISONS.items():
        parser.add_argument(f"--{name}", action="store_true", help=help_text)
    args = parser.parse_args()
    chosen = [name for name in COMPARISONS if getattr(args, name.replace("-", "_"))]
    if chosen:
        start = time.perf_counter()
        stem = "bench_prealign_" + chosen[0].replace("-", "_")
        tables, settings, effects, leave, _ = COMPARISONS[chosen[0]]
        names = tables[:4] if args.quick else tables
        seeds = [0] if args.quick else [0, 1, 2]
        rows = mixed_units(names, seeds, effects, settings, leave)
        table = evidence_summary(rows, settings)
        print(table)
        parts = [_common.machine_line(), table, _common.grouped_table(rows, MIXED_COLUMNS)]
        parts.append(f"{time.perf_counter() - start:.0f} s in all")
        record = {stem[len("bench_prealign_") :]: rows, "command": _common.command()}
        _common.write_results(_common.result_stem(stem, args.quick), record, "\n\n".join(parts))
        return
    if args.turned:
        start = time.perf_counter()
        rows = turned_lines(range(4))
        table = turned_summary(rows)
        print(table)
        parts = [_common.machine_line(), table, _common.grouped_table(rows, WELL_COLUMNS)]
        parts.append(f"{time.perf_counter() - start:.0f} s in all")
        record = {"turned": rows, "command": _common.command()}
        _common.write_results("bench_prealign_turned", record, "\n\n".join(parts))
        return
    seeds = [0] if args.quick else [0, 1, 2]
    names = TABULAR[:4] if args.quick else TABULAR
    start = time.perf_counter()
    well_rows = wells(seeds)
    mixed_rows = mixed_units(names, seeds[:2])
    table = summary(well_rows, mixed_rows)
    print(table)
    markdown = "\n\n".join(
        [
            _common.machine_line(),
            table,
            _common.grouped_table(well_rows, WELL_COLUMNS),
            _common.grouped_table(mixed_rows, MIXED_COLUMNS),
            f"{time.perf_counter() - start:.0f} s in all",
        ]
    )
    record = {"wells": well_rows, "mixed_units": mixed_rows, "command": _common.command()}
    _common.write_results(_common.result_stem("bench_prealign", args.quick), record, markdown)


if __name__ == "__main__":
    main()
