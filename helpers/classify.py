"""A fruit classifier in Spark ML, and the whole pipeline as one saved ``PipelineModel``.

Multinomial logistic regression is trained on the PCA features of Training and scored on
Test, distributed (Spark ML, in the JVM). It is then put after the stages that already
exist: :class:`helpers.features.transformer.ImageFeaturizer` (image bytes -> ``features``), a small
array-to-vector stage, the fitted scaler and PCA of ``pca_model/`` (not refitted), the
classifier and ``IndexToString``. The result, saved to ``output_root/pipeline_model/``,
takes any DataFrame of image bytes (``spark.read.format("binaryFile").load(paths)``) and
adds ``features``, ``error``, ``pca``, ``probability`` and ``predicted_label``. Rows whose
bytes do not decode keep their ``error`` and get nulls, never a failed job.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.feature import IndexToString, StringIndexer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from helpers.evaluate import Score
from helpers.features.runtimes import RUNTIMES, LiteRTInt8
from helpers.features.spec import FeatureSpec
from helpers.features.transformer import ImageFeaturizer
from helpers.outputs import publish, published

log = logging.getLogger(__name__)

#: Under ``output_root``: the whole pipeline, image bytes to a fruit name.
PIPELINE_MODEL = "pipeline_model"
#: Columns the classifier stages add, nulled on rows with an error.
PREDICTION_COLS = ("rawPrediction", "probability", "prediction", "predicted_label")


def vector_or_null(column: str) -> Column:
    """``column`` (a Spark ML vector) as array<double>, null where the vector is null.

    Spark's ``vector_to_array`` fails on a null vector: the rows of images that did not
    decode have one in every column the pipeline model adds.
    """
    return F.when(F.col(column).isNotNull(), vector_to_array(column))


class ArrayToVector(
    Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable
):
    """array<float> (``inputCol``) -> Spark ML dense vector (``outputCol``), in the JVM.

    A null array (an image that did not decode) becomes a vector of ``size`` zeros, so the
    scaler, PCA and classifier after it run; :class:`NullOnError` nulls their outputs again.
    """

    size: Param[int] = Param(
        Params._dummy(), "size", "width of the arrays", typeConverter=TypeConverters.toInt
    )

    @keyword_only
    def __init__(
        self, *, inputCol: str = "features", outputCol: str = "vector", size: int = 1280
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)
        self._setDefault(inputCol="features", outputCol="vector", size=1280)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        column = F.col(self.getInputCol())
        zeros = F.array_repeat(F.lit(0.0).cast("float"), self.getOrDefault(self.size))
        return dataset.withColumn(self.getOutputCol(), array_to_vector(F.coalesce(column, zeros)))


class NullOnError(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """Null the columns ``cols`` on rows whose ``errorCol`` is set: no made-up prediction,
    no made-up PCA for an image that did not decode."""

    errorCol: Param[str] = Param(
        Params._dummy(), "errorCol", "error column", typeConverter=TypeConverters.toString
    )
    cols: Param[list[str]] = Param(
        Params._dummy(),
        "cols",
        "columns nulled where errorCol is set",
        typeConverter=TypeConverters.toListString,
    )

    @keyword_only
    def __init__(self, *, errorCol: str = "error", cols: list[str] | None = None) -> None:
        super().__init__()
        self._setDefault(errorCol="error", cols=[])
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        ok = F.col(self.getOrDefault(self.errorCol)).isNull()
        for name in self.getOrDefault(self.cols):
            if name in dataset.columns:
                dataset = dataset.withColumn(name, F.when(ok, F.col(name)))
        return dataset


@dataclass
class Classification:
    """A trained classifier (or why there is none) and its scores on Test.

    ``labels[i]`` is the class of prediction ``i``. ``result`` is a :class:`Score`, as the
    probe's (accuracy, rows, worst classes, note, iterations), or ``skipped`` with the reason.
    """

    model: LogisticRegressionModel | None
    labels: list[str]
    result: Score
    params: dict[str, Any] = field(default_factory=dict)

    #: What the manifest names as the estimator.
    ESTIMATOR = "pyspark.ml LogisticRegression"

    def to_manifest(self) -> dict[str, Any]:
        """The ``classifier`` section's keys for the training: the scores (or ``skipped``),
        the estimator and its parameters."""
        return {**self.result.to_manifest(), "estimator": self.ESTIMATOR, "params": self.params}

    def summary(self) -> str:
        """One line: Test accuracy and rows, or why there is no classifier."""
        if self.result.skipped is not None:
            return f"no classifier: {self.result.skipped}"
        return (
            f"Spark ML logistic regression: Test accuracy {self.result.accuracy:.3f} "
            f"({self.result.test_rows} Test images, {len(self.labels)} classes)"
        )


@dataclass(frozen=True)
class ModelCheck:
    """The saved pipeline model loaded back and run on a few images of ``pca/``: the
    largest difference from their ``pca/`` rows, absolute and relative (None without
    images to check)."""

    images: int
    max_abs_pca_difference: float | None = None
    max_relative_pca_difference: float | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``check`` keys (only ``images`` when none was checked)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def read_reduced(spark: SparkSession, output_root: str) -> DataFrame:
    """``pca/`` under ``output_root`` (notebook 03's output), ``pca`` as a Spark ML vector."""
    reduced = spark.read.parquet(published(output_root, "pca"))
    return reduced.withColumn("pca", array_to_vector("pca"))


def load_reduction_model(spark: SparkSession, output_root: str) -> PipelineModel:
    """The fitted scaler + PCA of ``pca_model/`` under ``output_root``: the version that made
    the current ``pca/`` rows (notebook 03 publishes them together)."""
    return PipelineModel.load(published(output_root, "pca_model", via="pca"))


def train_classifier(reduced: DataFrame, *, max_iter: int = 300) -> Classification:
    """Multinomial logistic regression on ``pca`` (a vector column), Training -> Test.

    The L2 penalty matches scikit-learn's ``C=1`` of the probe (``regParam = 1/rows``) and,
    like the probe on PCA components, the columns are not rescaled: they already share one
    scale. Test rows of classes Training lacks are left out of the score, with a ``note``;
    fewer than two Training classes, or no Test rows, give a ``skipped`` score.
    """
    rows = reduced.select(F.lower("split").alias("_split"), "label", "pca")
    train = rows.where("_split = 'training'").cache()
    test = rows.where("_split = 'test'")
    counts = {r["label"]: r["count"] for r in train.groupBy("label").count().collect()}
    test_counts = {r["label"]: r["count"] for r in test.groupBy("label").count().collect()}
    classes = sorted(counts)
    unknown = sorted(set(test_counts) - set(classes))
    reason = None
    if not counts or not test_counts:
        reason = "it needs both a Training and a Test split"
    elif len(classes) < 2:
        reason = f"Training holds a single class ('{classes[0]}'); a classifier needs two"
    elif not set(test_counts) - set(unknown):
        reason = "no Test image belongs to a class that Training holds"
    if reason:
        train.unpersist()
        log.warning("classifier skipped: %s", reason)
        return Classification(None, classes, Score(skipped=reason))
    train_rows = sum(counts.values())
    indexer = StringIndexer(
        inputCol="label",
        outputCol="label_index",
        stringOrderType="alphabetAsc",
        handleInvalid="skip",  # Test classes that Training lacks: left out, counted below
    ).fit(train)
    params = {
        "family": "multinomial",
        "regParam": 1.0 / train_rows,
        "elasticNetParam": 0.0,
        "standardization": False,
        "maxIter": max_iter,
        "tol": 1e-6,
    }
    estimator = LogisticRegression(
        featuresCol="pca", labelCol="label_index", predictionCol="prediction", **params
    )
    model = estimator.fit(indexer.transform(train))
    train.unpersist()
    labels = list(indexer.labels)
    scored = IndexToString(inputCol="prediction", outputCol="predicted_label", labels=labels)
    predicted = scored.transform(model.transform(indexer.transform(test)))
    per_class = (
        predicted.groupBy("label")
        .agg(F.avg((F.col("label") == F.col("predicted_label")).cast("double")).alias("acc"))
        .orderBy("acc", "label")
        .collect()
    )
    test_rows = sum(test_counts[r["label"]] for r in per_class)
    correct = sum(r["acc"] * test_counts[r["label"]] for r in per_class)
    note = None
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        note = (
            f"{sum(test_counts[u] for u in unknown)} Test images of {len(unknown)} classes "
            f"that Training lacks are left out of the score ({shown})"
        )
    result = Score(
        accuracy=float(correct / test_rows),
        train_rows=train_rows,
        test_rows=test_rows,
        worst_classes={r["label"]: float(r["acc"]) for r in per_class[:5]},
        note=note,
        iterations=int(model.summary.totalIterations),
    )
    log.info("Spark ML logistic regression: Test accuracy %.4f", result.accuracy)
    return Classification(model, labels, result, params)


def committed_featurizer(spec: FeatureSpec, settings: dict[str, Any] | None) -> ImageFeaturizer:
    """The featurizer of ``spec`` that makes features like the committed ones (``settings``:
    :func:`helpers.features.store.committed_settings`): quantized with their calibration
    when they are ``litert-int8``'s, float32 when they are not. A pipeline whose featurizer
    differs in this from notebook 02's would feed its classifier features it was not
    trained on; ``spec.runtime`` is followed otherwise.
    """
    calibration = (settings or {}).get("int8_calibration")
    runtime = RUNTIMES[spec.resolved().runtime]
    if calibration and not runtime.calibrated:
        log.warning("features/ were made by litert-int8: the pipeline's featurizer is too")
        spec = replace(spec, runtime=LiteRTInt8.name)
    elif runtime.calibrated and settings and not calibration:
        log.warning("features/ were made in float32: the pipeline's featurizer is too")
        spec = replace(spec, runtime="auto")
    featurizer = ImageFeaturizer.from_spec(spec)
    return featurizer.setCalibration(calibration) if calibration else featurizer


def check_weights(featurizer: ImageFeaturizer, settings: dict[str, Any] | None) -> str:
    """The featurizer's weights checksum, once checked to match ``settings``, those of the
    committed features (:func:`helpers.features.store.committed_settings`), when known.

    A pipeline whose CNN, weights or image size differ from those that made ``features/``
    would feed the PCA vectors it was not fitted on. One checksum names the weights
    everywhere (:attr:`helpers.features.models.Weights.checksum`: a weights file's SHA-256).
    """
    checksum = featurizer.weightsChecksum()
    if not settings:
        return checksum
    mine = {
        "model_name": featurizer.getModelName(),
        "weights_sha256": checksum,
        "image_size": featurizer.getImageSize(),
    }
    differ = [k for k, v in mine.items() if settings.get(k) != v]
    if differ:
        shown = ", ".join(
            f"{k} {str(mine[k])[:12]} (features/: {str(settings.get(k))[:12]})" for k in differ
        )
        raise ValueError(
            f"this featurizer differs from the one that made features/: {shown}; pass the "
            "same model_name, weights and image_size as notebook 02, or run 02 again with "
            "overwrite=True"
        )
    return checksum


def pipeline_model(
    featurizer: ImageFeaturizer, reduction: PipelineModel, classification: Classification
) -> PipelineModel:
    """One PipelineModel: image bytes -> ``features`` -> ``pca`` -> ``predicted_label``.

    The scaler and PCA stages are ``reduction``'s, as fitted (``vector`` -> ``scaled`` ->
    ``pca``); without a classifier (``classification.model`` None) it stops at ``pca``.
    """
    stages: list[Transformer] = [
        featurizer,
        ArrayToVector(
            inputCol=featurizer.getOutputCol(), outputCol="vector", size=featurizer.featureDim
        ),
        *reduction.stages,
    ]
    masked = ["vector", "scaled", "pca"]
    if classification.model is not None:
        stages.append(classification.model)
        stages.append(
            IndexToString(
                inputCol="prediction", outputCol="predicted_label", labels=classification.labels
            )
        )
        masked += list(PREDICTION_COLS)
    stages.append(NullOnError(errorCol=featurizer.getErrorCol(), cols=masked))
    return PipelineModel(stages=stages)


def save_pipeline_model(model: PipelineModel, output_root: str) -> str:
    """Publish ``model`` as the new version of ``output_root/pipeline_model/``; its URI."""
    spark = SparkSession.getActiveSession()
    assert spark is not None, "save_pipeline_model needs an active SparkSession"
    publish(
        spark,
        output_root,
        {PIPELINE_MODEL: lambda uri: model.write().save(uri)},
        purpose="04_classifier: pipeline_model/",
    )
    target = published(output_root, PIPELINE_MODEL)
    log.info("saved the pipeline model to %s", target)
    return target


def pipeline_labels(model: PipelineModel) -> list[str]:
    """The class names of a pipeline model, in the order of its ``probability`` vector."""
    for stage in model.stages:
        if isinstance(stage, IndexToString):
            return list(stage.getLabels())
    return []


def check_pipeline_model(
    spark: SparkSession, model_uri: str, reduced: DataFrame, *, images: int = 4
) -> ModelCheck:
    """Load the saved model and run it on a few images of ``pca/``: the largest difference
    from their ``pca/`` rows, absolute and relative to their largest component (the CNN's
    floats vary by about 1e-6 with the batch an image is in; PCA of standardized columns
    magnifies that in columns of small variance).

    A check that the saved folder is whole and composes the stages that made ``pca/``.
    """
    plain = ~F.col("path").rlike(r"[{}\[\]*?%#]|/[._]")  # no glob specials, nothing hidden
    sample = (
        reduced.where(plain).orderBy(F.xxhash64("path")).limit(images).select("path", "pca")
    ).collect()
    if not sample:
        return ModelCheck(images=0)
    model = PipelineModel.load(model_uri)
    files = spark.read.format("binaryFile").load([row["path"] for row in sample])
    out = model.transform(files).select("path", "error", vector_to_array("pca").alias("pca_array"))
    found = {row["path"]: row for row in out.collect()}
    got_rows, expected_rows = [], []
    for row in sample:
        got = found.get(row["path"])
        if got is None or got["error"] is not None:
            raise ValueError(f"the saved pipeline model gave no features for {row['path']}")
        got_rows.append(np.asarray(got["pca_array"]))
        expected_rows.append(row["pca"].toArray())
    difference = float(np.max(np.abs(np.stack(got_rows) - np.stack(expected_rows))))
    scale = float(np.max(np.abs(np.stack(expected_rows)))) or 1.0
    return ModelCheck(
        images=len(sample),
        max_abs_pca_difference=difference,
        max_relative_pca_difference=difference / scale,
    )
