"""scikit-learn baselines on the same features as the networks."""

import numpy as np

from astro_asid.fermi_catalog.features import (FeatureConfig, _get_task, extract_features,
                                               flatten_features, task_labels)

__all__ = ["BaselineClassifier"]


class BaselineClassifier:
    """Random forest or gradient-boosted trees on the flattened network inputs.

    Parameters
    ----------
    kind : {"rf", "gbdt"}
        `~sklearn.ensemble.RandomForestClassifier` (500 trees, balanced
        class weights per bootstrap) or
        `~sklearn.ensemble.HistGradientBoostingClassifier` (balanced class weights).
    spectrum, history, extras
        Inputs, as in `~astro_asid.fermi_catalog.CatalogClassifier`.
    seed : int
    n_jobs : int
        Cores for the random forest.
    **options
        Passed on to the scikit-learn estimator (e.g. ``n_estimators``).
    """

    def __init__(self, kind="rf", spectrum=True, history=True, extras=(), seed=0, n_jobs=1,
                 **options):
        if kind not in ("rf", "gbdt"):
            raise ValueError(f"kind must be 'rf' or 'gbdt', not {kind!r}")
        self.kind = kind
        self.features = FeatureConfig(spectrum=spectrum, history=history, extras=tuple(extras))
        self.seed = int(seed)
        self.n_jobs = n_jobs
        self.options = options
        self.model = None
        self.class_names = None

    def _make(self):
        from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

        if self.kind == "rf":
            options = dict(n_estimators=500, class_weight="balanced_subsample",
                           random_state=self.seed, n_jobs=self.n_jobs)
            options.update(self.options)
            return RandomForestClassifier(**options)
        options = dict(max_iter=300, learning_rate=0.05, class_weight="balanced",
                       random_state=self.seed)
        options.update(self.options)
        return HistGradientBoostingClassifier(**options)

    def _x(self, table):
        return flatten_features(extract_features(table, self.features))

    def fit(self, table, task, labels=None):
        """Train on the labelled rows of ``task`` (see `CatalogClassifier.fit`)."""
        task_obj = _get_task(task)
        labels = task_labels(table, task_obj) if labels is None else np.asarray(labels, int)
        keep = labels >= 0
        self.class_names = list(task_obj.class_names)
        self.features = self.features.resolve(table)
        self.model = self._make().fit(self._x(table[keep]), labels[keep])
        return self

    def predict_proba(self, table):
        """Class probabilities (N, K)."""
        if self.model is None:
            raise RuntimeError("this BaselineClassifier is not trained: call fit()")
        return self.model.predict_proba(self._x(table))
