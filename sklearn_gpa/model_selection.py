"""Model selection with source and target rows: splitters, and a downstream-task estimator.

A transport estimator is fitted on source *and* target rows and scored on held-out source
*and* target rows, so every training fold and every test fold must hold both.  Ordinary
splitters (``KFold``, ``ShuffleSplit``) do not promise that.  The splitters here stratify
by ``sample_domain`` (skada's convention: ``>= 0`` source rows, ``< 0`` target rows), so
each domain is divided among the folds in the same proportions.

They request ``sample_domain`` through scikit-learn's metadata routing, like the
estimators, so one call routes it to the splitter, to ``fit`` and to ``score``::

    import sklearn
    from sklearn.model_selection import GridSearchCV

    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(pipeline, grid, cv=DomainStratifiedKFold(3))
        search.fit(X, y, sample_domain=sample_domain)

skada's ``SourceTargetShuffleSplit`` is routed the same way and works too.

Parallel and distributed searches
---------------------------------
``n_jobs=-1`` (joblib's default "loky" backend, one process per worker) needs nothing
more: the estimators pickle, and each worker starts with ``OMP_NUM_THREADS`` set by joblib
to ``n_cores // n_jobs``, which torch adopts.  On top of that, a fit runs small networks
on one torch thread (more threads only cost synchronisation there), so ``n_jobs`` workers
use at most the ``n_cores`` the machine has.  Starting the workers (importing torch in
each) costs seconds, once per session: joblib reuses them.  ``benchmarks/bench_search.py``
measures the start-up and the speed-up (``benchmarks/README.md``).

The same search runs on a Dask cluster through joblib::

    import joblib
    from dask.distributed import Client

    client = Client("tcp://scheduler-address:8786")  # or Client(LocalCluster(...))
    with sklearn.config_context(enable_metadata_routing=True):
        with joblib.parallel_backend("dask"):
            search.fit(X, y, sample_domain=sample_domain)

Every worker needs the same versions of sklearn-gpa, scikit-learn and torch as the client.
Start workers with one thread each and as many processes as cores
(``dask worker tcp://scheduler-address:8786 --nworkers <cores> --nthreads 1``); Dask's
nannies set ``OMP_NUM_THREADS=1`` in worker processes, so torch does not oversubscribe.
Threaded workers (``processes=False``) share one torch thread pool: small fits still use
one thread each, but large ones (above 5e7 multiply-adds per network evaluation) would
compete, so prefer process workers.  The routing setting travels with each task
(scikit-learn's ``delayed`` carries the configuration), on every backend.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import BaseCrossValidator
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.validation import _num_samples, check_is_fitted, column_or_1d, validate_data

from .utils import check_sample_domain, known_labels

__all__ = ["DomainStratifiedKFold", "DomainStratifiedShuffleSplit", "IntegratedClassifier"]


def _missing_sample_domain_message(owner: str) -> str:
    if get_config()["enable_metadata_routing"]:
        how = "Pass sample_domain=... to the fit of the search (or to cross_validate's params)."
    else:
        how = (
            "Inside GridSearchCV / cross_validate, enable metadata routing "
            "(sklearn.set_config(enable_metadata_routing=True) or sklearn.config_context) "
            "and pass sample_domain=... to fit."
        )
    return (
        f"{owner} needs sample_domain (>= 0 source rows, < 0 target rows) to keep source "
        f"and target rows in every fold. {how}"
    )


class _DomainSplitter(BaseCrossValidator):
    """Shared validation: ``sample_domain`` is required, each domain is one stratum."""

    __metadata_request__split = {"sample_domain": True}

    def split(self, X, y=None, groups=None, *, sample_domain=None):
        """Generate train and test indices, each holding rows of every domain.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows; only their number is used.
        y : array-like of shape (n_samples,), default=None
            Ignored.
        groups : None
            Ignored, exists for compatibility.
        sample_domain : array-like of shape (n_samples,)
            Domain of each row: ``>= 0`` source, ``< 0`` target.  Required.

        Yields
        ------
        train : ndarray of int
            Training row indices.
        test : ndarray of int
            Test row indices.
        """
        if groups is not None:
            warnings.warn(
                f"The groups parameter is ignored by {type(self).__name__}; the folds are "
                "stratified by sample_domain.",
                UserWarning,
                stacklevel=2,
            )
        strata = self._domain_strata(X, sample_domain)
        yield from self._iter_indices(strata)

    def _domain_strata(self, X, sample_domain) -> list[np.ndarray]:
        """Row indices of each domain, in order of domain value."""
        if sample_domain is None:
            raise ValueError(_missing_sample_domain_message(type(self).__name__))
        check_sample_domain(sample_domain, _num_samples(X))
        domains = np.asarray(sample_domain)
        values, inverse = np.unique(domains, return_inverse=True)
        strata = [np.flatnonzero(inverse == k) for k in range(len(values))]
        for value, rows in zip(values, strata):
            self._check_domain_size(int(value), len(rows))
        return strata

    def get_n_splits(self, X=None, y=None, groups=None, *, sample_domain=None) -> int:
        """The number of splits.

        Parameters
        ----------
        X, y, groups, sample_domain : ignored
            Exist for compatibility.

        Returns
        -------
        n_splits : int
        """
        return self.n_splits


class DomainStratifiedKFold(_DomainSplitter):
    """K-fold cross-validation that keeps every domain in every fold.

    The rows of each domain (each value of ``sample_domain``) are dealt to the
    ``n_splits`` folds in turn, so each fold gets ``1 / n_splits`` of each domain (to one
    row) and fold sizes differ by at most one row.  Each row is in exactly one test fold.
    Without shuffling, rows are dealt in their order in ``X``: rows sorted by class within
    a domain then spread evenly over the folds.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.  Every domain needs at least ``n_splits`` rows.
    shuffle : bool, default=False
        Shuffle the rows of each domain before dealing them.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffle (only with ``shuffle=True``); an int gives the same folds at
        every call of ``split``.

    See Also
    --------
    DomainStratifiedShuffleSplit : Random train/test splits, as many as wanted.
    skada.model_selection.SourceTargetShuffleSplit : skada's source/target shuffle split.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.model_selection import DomainStratifiedKFold
    >>> sample_domain = np.array([1, 1, 1, 1, 1, 1, -2, -2, -2])
    >>> X = np.zeros((9, 2))
    >>> cv = DomainStratifiedKFold(n_splits=3)
    >>> for train, test in cv.split(X, sample_domain=sample_domain):
    ...     print(train, test, sample_domain[test])
    [1 2 4 5 7 8] [0 3 6] [ 1  1 -2]
    [0 2 3 5 6 8] [1 4 7] [ 1  1 -2]
    [0 1 3 4 6 7] [2 5 8] [ 1  1 -2]
    """

    def __init__(
        self,
        n_splits: int = 5,
        *,
        shuffle: bool = False,
        random_state: int | np.random.RandomState | None = None,
    ):
        if not isinstance(n_splits, Integral) or isinstance(n_splits, bool) or n_splits < 2:
            raise ValueError(f"n_splits must be an integer of at least 2, got {n_splits!r}.")
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False, got {shuffle!r}.")
        if not shuffle and random_state is not None:
            raise ValueError(
                "random_state has no effect without shuffle=True; leave it None or shuffle."
            )
        self.n_splits = int(n_splits)
        self.shuffle = shuffle
        self.random_state = random_state

    def _check_domain_size(self, domain: int, n_rows: int) -> None:
        if n_rows < self.n_splits:
            raise ValueError(
                f"Domain {domain} has {n_rows} rows, fewer than n_splits={self.n_splits}: "
                "every fold needs rows of every domain. Lower n_splits."
            )

    def _iter_indices(self, strata):
        rng = check_random_state(self.random_state)
        if self.shuffle:
            strata = [rng.permutation(rows) for rows in strata]
        dealt = np.concatenate(strata)
        # Dealing the concatenated domains in turn balances each domain and the folds.
        fold = np.arange(len(dealt)) % self.n_splits
        for k in range(self.n_splits):
            yield np.sort(dealt[fold != k]), np.sort(dealt[fold == k])


class DomainStratifiedShuffleSplit(_DomainSplitter):
    """Random train/test splits that take the same share of every domain.

    At each split, every domain (each value of ``sample_domain``) is shuffled and
    ``ceil(test_size * n_rows)`` of its rows go to the test set, ``floor(train_size *
    n_rows)`` (or all the others) to the training set, so both sets hold rows of every
    domain.  Test sets of different splits may overlap.

    Parameters
    ----------
    n_splits : int, default=10
        Number of splits.
    test_size : float, default=0.2
        Share of each domain in the test set, in (0, 1).
    train_size : float or None, default=None
        Share of each domain in the training set, in (0, 1); None takes the rest.
    random_state : int, RandomState instance or None, default=None
        An int gives the same splits at every call of ``split``.

    See Also
    --------
    DomainStratifiedKFold : Each row tested exactly once.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.model_selection import DomainStratifiedShuffleSplit
    >>> sample_domain = np.repeat([1, -2], [20, 10])
    >>> cv = DomainStratifiedShuffleSplit(n_splits=2, test_size=0.25, random_state=0)
    >>> for train, test in cv.split(np.zeros((30, 1)), sample_domain=sample_domain):
    ...     print(len(train), len(test), np.bincount(sample_domain[test] >= 0).tolist())
    22 8 [3, 5]
    22 8 [3, 5]
    """

    def __init__(
        self,
        n_splits: int = 10,
        *,
        test_size: float = 0.2,
        train_size: float | None = None,
        random_state: int | np.random.RandomState | None = None,
    ):
        if not isinstance(n_splits, Integral) or isinstance(n_splits, bool) or n_splits < 1:
            raise ValueError(f"n_splits must be a positive integer, got {n_splits!r}.")
        for name, share in (("test_size", test_size), ("train_size", train_size)):
            if share is None and name == "train_size":
                continue
            if not isinstance(share, Real) or not 0 < share < 1:
                raise ValueError(
                    f"{name} must be a share of each domain's rows in (0, 1), got {share!r}."
                )
        if train_size is not None and test_size + train_size > 1:
            raise ValueError(
                f"test_size + train_size = {test_size + train_size:g} exceeds 1: the training "
                "and test sets would share rows."
            )
        self.n_splits = int(n_splits)
        self.test_size = test_size
        self.train_size = train_size
        self.random_state = random_state

    def _sizes(self, n_rows: int) -> tuple[int, int]:
        """(train, test) row counts for a domain of ``n_rows`` rows."""
        n_test = int(np.ceil(self.test_size * n_rows))
        if self.train_size is None:
            return n_rows - n_test, n_test
        return int(np.floor(self.train_size * n_rows)), n_test

    def _check_domain_size(self, domain: int, n_rows: int) -> None:
        n_train, n_test = self._sizes(n_rows)
        if n_train < 1 or n_train + n_test > n_rows:
            raise ValueError(
                f"Domain {domain} has {n_rows} rows: too few for a test share of "
                f"{self.test_size} and a training share of {self.train_size} with at least "
                "one row on each side."
            )

    def _iter_indices(self, strata):
        rng = check_random_state(self.random_state)
        sizes = [self._sizes(len(rows)) for rows in strata]
        for _ in range(self.n_splits):
            train, test = [], []
            for rows, (n_train, n_test) in zip(strata, sizes):
                order = rng.permutation(rows)
                test.append(order[:n_test])
                train.append(order[n_test : n_test + n_train])
            yield np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class IntegratedClassifier(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """Classify the rows of one study with a classifier trained on another, after integration.

    The downstream task of data-set integration: a labelled reference study (the *target*
    rows) trains ``classifier``; a new study (the *source* rows) is first moved onto the
    reference by ``integrator``, then classified.

    - ``fit(X, y, sample_domain=...)`` fits ``integrator`` on all rows **without labels**
      (the new study's labels are never used for training), then ``classifier`` on the
      integrated target rows whose label is known.
    - ``predict(X)`` integrates the rows (every row is treated as a new source row;
      with ``sample_domain``, target rows pass unchanged) and classifies them.
    - ``score(X, y, sample_domain=...)`` is the **balanced accuracy on the source rows**
      of ``X`` with a known label (on all rows when ``sample_domain`` is None), so
      ``cross_validate`` and ``GridSearchCV`` with the default ``scoring=None`` measure how
      well the integration carries the reference classifier over to the new study.

    Source labels in ``y`` therefore serve only for scoring.  ``fit``, ``predict`` and
    ``score`` request ``sample_domain`` through metadata routing; an integrator that is a
    ``Pipeline`` needs routing enabled to receive it.

    Parameters
    ----------
    integrator : transformer or None
        Fitted as ``integrator.fit_transform(X, sample_domain=sample_domain)`` and applied
        as ``integrator.transform(X[, sample_domain=...])``, e.g. ``GPATransporter()``,
        ``make_pipeline(StandardScaler(), GPATransporter())``, ``LatentGPA()`` or
        ``MeanStdAdjuster()``.  None classifies the source rows as they are (no integration,
        the baseline).
    classifier : classifier
        Trained on the integrated target rows.

    Attributes
    ----------
    integrator_ : transformer or None
        The fitted integrator.
    classifier_ : classifier
        The fitted classifier.
    classes_ : ndarray
        Classes of the target rows.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_gpa import MeanStdAdjuster
    >>> from sklearn_gpa.datasets import make_batch_effect
    >>> from sklearn_gpa.model_selection import IntegratedClassifier
    >>> from sklearn_gpa.utils import stack_domains
    >>> Xs, ys, Xt, yt = make_batch_effect(100, 100, n_features=10, random_state=0)
    >>> X, y, sample_domain = stack_domains(Xs, Xt, ys, yt)
    >>> clf = LogisticRegression()
    >>> raw = IntegratedClassifier(None, clf).fit(X, y, sample_domain=sample_domain)
    >>> adjusted = IntegratedClassifier(MeanStdAdjuster(), clf)
    >>> adjusted = adjusted.fit(X, y, sample_domain=sample_domain)
    >>> bool(raw.score(X, y, sample_domain=sample_domain) < 0.8)
    True
    >>> bool(adjusted.score(X, y, sample_domain=sample_domain) > 0.9)
    True
    """

    __metadata_request__fit = {"sample_domain": True}
    __metadata_request__predict = {"sample_domain": True}
    __metadata_request__score = {"sample_domain": True}

    def __init__(self, integrator, classifier):
        self.integrator = integrator
        self.classifier = classifier

    def fit(self, X, y, *, sample_domain=None):
        """Fit the integrator on all rows, then the classifier on the target rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Source and target rows.
        y : array-like of shape (n_samples,)
            Labels; those of source rows are not used.  Target rows with an unknown label
            (-1 or NaN, skada's convention) are left out of the classifier's training.
        sample_domain : array-like of shape (n_samples,)
            ``>= 0`` source rows, ``< 0`` target rows.  Required.

        Returns
        -------
        self : IntegratedClassifier
        """
        if sample_domain is None:
            raise ValueError(
                "IntegratedClassifier.fit needs sample_domain to tell the new study (source, "
                ">= 0) from the labelled reference (target, < 0)."
            )
        if y is None:
            raise ValueError(
                "IntegratedClassifier requires y to be passed, but the target y is None."
            )
        # n_features_in_ and feature_names_in_; X itself goes to the integrator unchanged.
        validate_data(self, X, skip_check_array=True)
        n_samples = _num_samples(X)
        if n_samples < 2:
            raise ValueError(
                f"IntegratedClassifier needs source and target rows; got {n_samples} sample."
            )
        y = column_or_1d(y, warn=True)
        source = check_sample_domain(sample_domain, n_samples)
        if y.shape != source.shape:
            raise ValueError(f"y must have shape {source.shape}, got {y.shape}.")
        if self.integrator is None:
            self.integrator_ = None
            integrated = X
        else:
            self.integrator_ = clone(self.integrator)
            integrated = self._fit_integrator(X, sample_domain)
        train = np.flatnonzero(~source & known_labels(y))
        if len(train) == 0:
            raise ValueError("No target row has a known label to train the classifier on.")
        self.classifier_ = clone(self.classifier).fit(_safe_indexing(integrated, train), y[train])
        self.classes_ = self.classifier_.classes_
        return self

    def _integrate(self, X, sample_domain):
        check_is_fitted(self, "classifier_")
        if len(getattr(X, "shape", ())) == 1:
            raise ValueError(
                "Expected a 2D array of rows, got a 1D array. Reshape your data with "
                "X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single row."
            )
        validate_data(self, X, skip_check_array=True, reset=False)
        if self.integrator_ is None:
            return X
        if sample_domain is None:
            return self.integrator_.transform(X)
        return self.integrator_.transform(X, sample_domain=sample_domain)

    def _fit_integrator(self, X, sample_domain):
        try:
            return self.integrator_.fit_transform(X, sample_domain=sample_domain)
        except (TypeError, ValueError) as exc:
            # A Pipeline takes sample_domain only through metadata routing: scikit-learn's
            # own error then speaks of "logisticregression__sample_weight".
            if "sample_domain" not in str(exc) or get_config()["enable_metadata_routing"]:
                raise
            raise ValueError(
                f"The integrator {type(self.integrator).__name__} did not take "
                "sample_domain in fit_transform. A Pipeline passes it to its steps only with "
                "metadata routing: sklearn.set_config(enable_metadata_routing=True), and "
                "set_fit_request(sample_domain=True) on the steps that take it (the "
                "package's estimators request it already)."
            ) from exc

    def predict(self, X, *, sample_domain=None) -> np.ndarray:
        """Integrate the rows and classify them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        sample_domain : array-like of shape (n_samples,), default=None
            Target rows (``< 0``) are classified as they are; None integrates every row.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        integrated = self._integrate(X, sample_domain)
        return self.classifier_.predict(integrated)

    def score(self, X, y, *, sample_weight=None, sample_domain=None) -> float:
        """Balanced accuracy on the source rows of ``X`` with a known label.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None
        sample_domain : array-like of shape (n_samples,), default=None
            None scores every row, each as a new source row.

        Returns
        -------
        score : float
        """
        y = np.asarray(y)
        rows = known_labels(y)
        if sample_domain is not None:
            rows &= check_sample_domain(sample_domain, len(y), require_both=False)
        rows = np.flatnonzero(rows)
        if len(rows) == 0:
            raise ValueError("No source row with a known label to score.")
        # Each row moved the way of its own source domain (several are moved each its own way).
        domains = None if sample_domain is None else np.asarray(sample_domain)[rows]
        y_pred = self.predict(_safe_indexing(X, rows), sample_domain=domains)
        weights = None if sample_weight is None else np.asarray(sample_weight)[rows]
        return float(balanced_accuracy_score(y[rows], y_pred, sample_weight=weights))
