"""The base of the estimators that move source rows onto target rows.

Domains follow skada: one ``X`` holds source and target rows, an integer ``sample_domain``
marks them (``>= 0`` source, ``< 0`` target).  The base validates ``X``, ``y`` and
``sample_domain`` once per public call and hands the checked arrays to the subclass's
hooks, as imbalanced-learn's ``fit_resample`` hands them to ``_fit_resample``:

* ``_fit(X, y, source, domains)``: learn; ``source`` is the boolean mask of source rows
  and ``domains`` the integer ``sample_domain``, both None without ``sample_domain``
  (generative mode).  Several source domains are each moved their own way (one batch
  effect each).  Returns the moved source rows (None in generative mode), which
  ``fit_transform`` puts in place;
* ``_move(X, y, domains)``: the moved version of rows that ``transform`` was asked to
  move (``domains``: their ``sample_domain``, or None where it was not given).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._threadpool import limit_blas_threads
from .utils import check_domains, check_magnitude, few, known_labels, warn_at_caller

__all__ = ["DomainTransformer", "class_index"]

_FLOAT_DTYPES = [np.float64, np.float32]


def class_index(classes, y, n_samples):
    """Index into ``classes`` of each label of ``y``, with named errors."""
    y = np.asarray(y)
    if y.shape != (n_samples,):
        raise ValueError(f"y must have shape ({n_samples},), got {y.shape}.")
    unknown = ~np.isin(y, classes)
    if unknown.any():
        raise ValueError(
            f"y holds classes {few(np.unique(y[unknown]))} that were not fitted; "
            f"known classes: {few(classes)}."
        )
    return np.searchsorted(classes, y)


class DomainTransformer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Validation, ``fit``, ``fit_transform``, ``transform`` and ``score`` for the hooks."""

    __metadata_request__fit = {"sample_domain": True}
    __metadata_request__transform = {"sample_domain": True}
    __metadata_request__score = {"sample_domain": True}

    def _continues_fit(self) -> bool:
        """Whether ``fit`` continues a previous fit (keeps ``n_features_in_``)."""
        return False

    def _validate_fit_data(self, X, y, sample_domain):
        X = validate_data(
            self, X, dtype=_FLOAT_DTYPES, ensure_min_samples=2, reset=not self._continues_fit()
        )
        check_magnitude(X)
        source = domains = None
        if sample_domain is not None:
            source, domains = check_domains(sample_domain, len(X), n_features=X.shape[1])
            n_domains = len(np.unique(domains[source]))
            if n_domains > 2 and 2 * n_domains > source.sum():
                warn_at_caller(
                    f"sample_domain holds {n_domains} source domains for {source.sum()} "
                    "source rows: most hold one row, which is moved as the pooled source "
                    "rows are. Is it a batch column? Rows of one batch share one value."
                )
        if y is not None:
            y = np.asarray(y)
            if y.shape != (X.shape[0],):
                raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}.")
            # Class labels, as a classifier takes them: a continuous target would make one
            # class (and flow) per distinct value.  Unknown labels (-1, NaN) are left out.
            known = known_labels(y)
            check_classification_targets(y[known])
            if not known.any():
                warn_at_caller(
                    "y holds no known label (every one is -1 or NaN, the marks of an "
                    "unknown label): the fit ignores it, as with y=None."
                )
        return X, y, source, domains

    def _validate_rows(self, X):
        """New rows for a fitted estimator: checked like the training rows."""
        check_is_fitted(self)
        return check_magnitude(validate_data(self, X, dtype=_FLOAT_DTYPES, reset=False))

    @limit_blas_threads
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, sample_domain=None):
        """Learn the map from source rows to target rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Source and target rows marked by ``sample_domain`` (integration); for the
            generative estimators, without ``sample_domain``, the rows to learn to generate.
        y : array-like of shape (n_samples,), default=None
            Class labels; -1 or NaN marks an unknown label (skada's convention).
        sample_domain : array-like of shape (n_samples,), default=None
            ``>= 0`` for source rows, ``< 0`` for target rows.  Several source values
            (batches, studies) are each moved onto the target rows their own way; give
            them one value to move them as one source.  Several target values are one
            reference.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        self._fit(*self._validate_fit_data(X, y, sample_domain))
        return self

    @limit_blas_threads
    @_fit_context(prefer_skip_nested_validation=False)
    def fit_transform(self, X, y=None, *, sample_domain=None):
        """Fit, then return ``X`` with its source rows moved as the fit moved them.

        Target rows are returned unchanged.  Without ``sample_domain`` (generative mode)
        every row is moved, as ``fit(X).transform(X)``.

        Parameters
        ----------
        X, y, sample_domain : see ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
        """
        X, y, source, domains = self._validate_fit_data(X, y, sample_domain)
        moved = self._fit(X, y, source, domains)
        if source is None:
            return self.transform(X)
        out = np.array(X, copy=True)
        out[source] = moved
        return out

    @limit_blas_threads
    def transform(self, X, y=None, *, sample_domain=None):
        """Move rows with the fitted map.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows to move.
        y : array-like of shape (n_samples,), default=None
            After a fit with class labels, the class of each row, which picks its map.
            None routes each row to the class a classifier of the training source rows
            predicts (after a generative fit: the class whose prior is likeliest there).
        sample_domain : array-like of shape (n_samples,), default=None
            When given, only source rows (``>= 0``) move; target rows (``< 0``) are returned
            unchanged, bit for bit.  After a fit with several source domains, each row
            moves the way its domain was fitted to.  None moves every row: in a
            ``Pipeline``, which passes no ``sample_domain`` unless metadata routing is
            enabled, every row is treated as a new source row (of the source domain a
            classifier of the training source rows predicts, after a fit with several).

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
            In the dtype of ``X`` (float64 for integer input).
        """
        X = self._validate_rows(X)
        move, domains = np.ones(len(X), dtype=bool), None
        if sample_domain is not None:
            move, domains = check_domains(
                sample_domain, len(X), require_both=False, n_features=X.shape[1]
            )
            domains = domains[move]
        if y is not None:
            y = np.asarray(y)
            if y.shape != (len(X),):
                raise ValueError(f"y must have shape ({len(X)},), got {y.shape}.")
        fitted_domains = self._source_domains()
        if domains is None and fitted_domains is not None:
            warn_at_caller(
                f"transform was given no sample_domain after a fit with "
                f"{len(fitted_domains)} source domains: each row moves the way of "
                "the domain that a classifier of the training source rows predicts, which "
                "can misroute rows of small or similar batches. Pass sample_domain (each "
                "row's batch) to move rows their own batch's way."
            )
        out = np.array(X, copy=True)
        if move.any():
            out[move] = self._move(X[move], None if y is None else y[move], domains)
        return out

    def _source_domains(self):
        """The source domains the fit moved each its own way (None for one)."""
        domains = getattr(self, "flow_domains_", None)
        return None if domains is None else np.unique(domains)

    def score(self, X, y=None, *, sample_weight=None, sample_domain=None):
        """Minus the energy distance between moved rows and target rows (higher is better).

        In integration, the source rows of ``X`` are moved and compared with its target
        rows; after a generative fit, without ``sample_domain``, ``len(X)`` new samples are
        compared with ``X``.  The energy distance has no parameter, so the score does not
        depend on the fitted L and grid searches over L and dt compare like with like.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows of ``X``.
        sample_domain : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        from .metrics import energy_distance

        X = self._validate_rows(X)
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if weights is not None and weights.shape != (len(X),):
            raise ValueError(f"sample_weight must have shape ({len(X)},), got {weights.shape}.")
        if sample_domain is None and getattr(self, "mode_", None) == "generation":
            moved, target = self.sample(len(X), random_state=0), X
            w_moved, w_target = None, weights
        else:
            if sample_domain is None:
                raise ValueError(
                    "score() of an integration fit needs sample_domain to tell source from "
                    "target rows (enable metadata routing to pass it through a search)."
                )
            source, domains = check_domains(sample_domain, len(X), n_features=X.shape[1])
            moved = self.transform(X[source], sample_domain=domains[source])
            target = X[~source]
            w_moved = None if weights is None else weights[source]
            w_target = None if weights is None else weights[~source]
        return -energy_distance(moved, target, sample_weight_x=w_moved, sample_weight_y=w_target)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags
