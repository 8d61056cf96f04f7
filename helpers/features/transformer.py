"""``ImageFeaturizer``: the feature step as a Spark ML ``Transformer`` for any binary column.

It runs the same model code as :func:`helpers.features.extract.featurize`, in a pandas UDF
(one model per Python worker, weights broadcast from the driver, a null vector and an
``error`` for bytes that do not decode), on any DataFrame with image bytes, e.g.
``spark.read.format("binaryFile").load(paths)``: no folder layout is assumed.

Saved alone or inside a ``PipelineModel``, the stage's folder holds its parameters
(``metadata/``) and the weights themselves (``weights/``, Parquet): a weights file's bytes,
with the file's SHA-256 as ``weights_sha256`` in the metadata (the checksum the manifest
records, :func:`helpers.features.models.driver_weights`), or, for ``imagenet`` and ``random``,
the weight arrays with their digest as ``weights_arrays_sha256``. Loading it in another
session or on another machine needs neither the original ``.h5`` file nor internet, and
a damaged copy is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType

from helpers.features.models import MODELS, Weights, driver_weights, weights_checksum
from helpers.features.runtimes import RUNTIME_CHOICES, RUNTIMES, Calibration
from helpers.features.spec import BATCH_SIZE, MAX_IMAGE_PIXELS, FeatureSpec
from helpers.features.store import committed_settings
from helpers.features.udf import (
    broadcast_model,
    feature_udf,
    runtime_environment,
    set_arrow_batch,
)
from helpers.images import list_images
from helpers.manifest import read_manifest
from helpers.spark.kind import default_parallelism, metadata_context, session_key

log = logging.getLogger(__name__)

#: Where a saved stage keeps its weights, inside its folder.
WEIGHTS_DIR = "weights"
#: ``weights_format`` in a saved stage's metadata: a weights file's bytes (one row), or the
#: weight arrays (one row each).
FILE_FORMAT, ARRAYS_FORMAT = "h5-file", "arrays"

_WEIGHTS_SCHEMA = StructType(
    [
        StructField("index", IntegerType(), False),
        StructField("dtype", StringType(), False),
        StructField("shape", StringType(), False),
        StructField("data", BinaryType(), False),
    ]
)


class _ImageFeaturizerParams(HasInputCol, HasOutputCol):
    """The parameters of :class:`ImageFeaturizer`: a :class:`FeatureSpec` and the columns."""

    errorCol: Param[str] = Param(
        Params._dummy(),
        "errorCol",
        "output column: why an image has no features (null when it has)",
        typeConverter=TypeConverters.toString,
    )
    modelName: Param[str] = Param(
        Params._dummy(),
        "modelName",
        f"CNN without its top: one of {sorted(MODELS)}",
        typeConverter=TypeConverters.toString,
    )
    imageSize: Param[int] = Param(
        Params._dummy(),
        "imageSize",
        "side in pixels the images are resized to for the CNN",
        typeConverter=TypeConverters.toInt,
    )
    batchSize: Param[int] = Param(
        Params._dummy(),
        "batchSize",
        "images per model call in the Python workers",
        typeConverter=TypeConverters.toInt,
    )
    runtime: Param[str] = Param(
        Params._dummy(),
        "runtime",
        f"inference runtime: one of {list(RUNTIME_CHOICES)} "
        "(auto: litert, else onnxruntime, where installed)",
        typeConverter=TypeConverters.toString,
    )
    weights: Param[str] = Param(
        Params._dummy(),
        "weights",
        "where the weights came from: 'imagenet', a .h5 path or an s3:// URI ('random': "
        "tests only); a saved stage carries the weights themselves",
        typeConverter=TypeConverters.toString,
    )

    calibration: Param[str] = Param(
        Params._dummy(),
        "calibration",
        "runtime litert-int8 only: the calibration images as notebook 02 recorded them, JSON "
        "{count, digest, seed} (the int8 model is read from the cache by its digest)",
        typeConverter=TypeConverters.toString,
    )

    maxImagePixels: Param[int] = Param(
        Params._dummy(),
        "maxImagePixels",
        "largest image decoded, width x height read from its header (a larger one gets a "
        "null vector and an error)",
        typeConverter=TypeConverters.toInt,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(
            inputCol="content",
            outputCol="features",
            errorCol="error",
            modelName="mobilenet_v2",
            imageSize=224,
            batchSize=BATCH_SIZE,
            runtime="auto",
            weights="imagenet",
            maxImagePixels=MAX_IMAGE_PIXELS,  # also a model saved before this Param existed
            calibration="",
        )

    def getErrorCol(self) -> str:
        """The column that says why a row has no features."""
        return self.getOrDefault(self.errorCol)

    def getModelName(self) -> str:
        """The CNN's name (:data:`helpers.features.models.MODELS`)."""
        return self.getOrDefault(self.modelName)

    def getImageSize(self) -> int:
        """Side in pixels fed to the CNN."""
        return self.getOrDefault(self.imageSize)

    def getBatchSize(self) -> int:
        """Images per model call."""
        return self.getOrDefault(self.batchSize)

    def getRuntime(self) -> str:
        """Inference runtime."""
        return self.getOrDefault(self.runtime)

    def getWeights(self) -> str:
        """Where the weights came from."""
        return self.getOrDefault(self.weights)

    def getMaxImagePixels(self) -> int:
        """Largest image decoded, in pixels."""
        return self.getOrDefault(self.maxImagePixels)

    def getCalibration(self) -> Calibration | None:
        """The calibration a quantized runtime's model was made with (``None``: not set)."""
        text = self.getOrDefault(self.calibration)
        if not text:
            return None
        try:
            return Calibration.from_manifest(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"ImageFeaturizer: calibration {text[:80]!r} is not the JSON "
                '{"count": ..., "digest": ..., "seed": ...} notebook 02 records (parameter '
                "'calibration')"
            ) from exc


class ImageFeaturizer(
    Transformer, _ImageFeaturizerParams, MLReadable["ImageFeaturizer"], MLWritable
):
    """Image bytes (``inputCol``) -> CNN features, array<float> (``outputCol``), or a null
    vector and the reason in ``errorCol``.

    A pretrained CNN without its top and with global average pooling (MobileNetV2: 1280
    floats), as in notebook 02 and with the same code: features equal
    :func:`helpers.features.extract.featurize`'s for the same bytes and settings. The weights are
    loaded on the driver on first use (or from the saved stage) and broadcast once per
    session; each Python worker builds the model once. The DataFrame's partitioning is
    kept: many small files in one partition run in one task (repartition first to use
    every core).
    """

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "content",
        outputCol: str = "features",
        errorCol: str = "error",
        modelName: str = "mobilenet_v2",
        imageSize: int = 224,
        batchSize: int = BATCH_SIZE,
        runtime: str = "auto",
        weights: str = "imagenet",
        maxImagePixels: int = MAX_IMAGE_PIXELS,
        calibration: str = "",
    ) -> None:
        super().__init__()
        self._loaded: Weights | None = None
        self._loaded_key: tuple[str, str] | None = None
        self._broadcasts: dict[tuple[str, str, str], Any] = {}
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCol: str = "content",
        outputCol: str = "features",
        errorCol: str = "error",
        modelName: str = "mobilenet_v2",
        imageSize: int = 224,
        batchSize: int = BATCH_SIZE,
        runtime: str = "auto",
        weights: str = "imagenet",
        maxImagePixels: int = MAX_IMAGE_PIXELS,
        calibration: str = "",
    ) -> ImageFeaturizer:
        """Set any of the parameters by name; checked here, before any weights are read."""
        kwargs = self._input_kwargs
        self._set(**kwargs)
        self.spec()
        self.getCalibration()
        return self

    def spec(self) -> FeatureSpec:
        """The stage's feature settings, checked (errors name the pipeline's parameters)."""
        return FeatureSpec(
            model_name=self.getModelName(),
            weights=self.getWeights(),
            image_size=self.getImageSize(),
            batch_size=self.getBatchSize(),
            runtime=self.getRuntime(),
            max_image_pixels=self.getMaxImagePixels(),
        )

    @classmethod
    def from_spec(cls, spec: FeatureSpec, **columns: str) -> ImageFeaturizer:
        """A stage running ``spec`` (``columns``: inputCol, outputCol, errorCol)."""
        return cls(
            modelName=spec.model_name,
            weights=spec.weights,
            imageSize=spec.image_size,
            batchSize=spec.batch_size,
            runtime=spec.runtime,
            maxImagePixels=spec.max_image_pixels,
            **columns,
        )

    def setInputCol(self, value: str) -> ImageFeaturizer:
        """Set the column of image bytes."""
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> ImageFeaturizer:
        """Set the features column."""
        return self._set(outputCol=value)

    def setErrorCol(self, value: str) -> ImageFeaturizer:
        """Set the error column."""
        return self._set(errorCol=value)

    def setBatchSize(self, value: int) -> ImageFeaturizer:
        """Set the images per model call (does not change the features)."""
        return self._set(batchSize=value)

    def setRuntime(self, value: str) -> ImageFeaturizer:
        """Set the inference runtime (same features within 1e-4 relative)."""
        self._set(runtime=value)
        self.spec()
        return self

    def setCalibration(self, value: str | dict[str, Any] | None) -> ImageFeaturizer:
        """Set the calibration of ``litert-int8`` as recorded: JSON, or the dict (count,
        digest, seed) of the committed features' ``int8_calibration``; ``None`` clears it."""
        text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value or ""
        self._set(calibration=text)
        self.getCalibration()
        return self

    @property
    def featureDim(self) -> int:
        """Width of the features: 1280 for MobileNetV2, 2048 for ResNet50."""
        return self.spec().dim

    def loadedWeights(self) -> Weights:
        """The weights the stage runs with (:class:`helpers.features.models.Weights`), read
        on the driver on first use from ``weights`` (a saved stage has them already)."""
        key = (self.getModelName(), self.getWeights())
        if self._loaded is None or self._loaded_key != key:
            self._set_loaded(driver_weights(key[0], key[1], self.getImageSize()), key)
        assert self._loaded is not None
        return self._loaded

    def weightsChecksum(self) -> str:
        """The checksum naming the weights, as the manifest's ``weights_sha256``."""
        return self.loadedWeights().checksum

    def _set_loaded(self, loaded: Weights, key: tuple[str, str]) -> None:
        self._loaded, self._loaded_key = loaded, key
        self._broadcasts = {}

    def _calibration(self, spec: FeatureSpec) -> Calibration | None:
        """The calibration ``spec``'s runtime needs (``None`` for the others)."""
        if not RUNTIMES[spec.runtime].calibrated:
            return None
        calibration = self.getCalibration()
        if calibration is None:
            raise ValueError(
                f"ImageFeaturizer: runtime '{spec.runtime}' needs the calibration notebook 02 "
                "recorded (the manifest's features.calibration, or the committed features' "
                "int8_calibration) as JSON (parameter 'calibration'), or use runtime 'litert'"
            )
        return calibration

    def _model_key(self, spec: FeatureSpec) -> str:
        """What names the workers' model: the weights, and a calibration's digest."""
        calibration = self._calibration(spec)
        checksum = self.weightsChecksum()
        return checksum if calibration is None else f"{checksum}-{calibration.digest}"

    def _broadcast(self, spark: SparkSession, spec: FeatureSpec) -> Any:
        """This session's broadcast of what ``spec``'s runtime runs, made once per session
        (a converted model comes from the same cache as notebook 02's)."""
        calibration = self._calibration(spec)  # before the weights: a missing one fails fast
        loaded = self.loadedWeights()
        key = (session_key(spark), self._model_key(spec), spec.runtime)
        if key not in self._broadcasts:
            self._broadcasts[key], _ = broadcast_model(spark, spec, loaded, calibration)
        return self._broadcasts[key]

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self.spec()
        column = self.getInputCol()
        if column not in dataset.columns:
            raise ValueError(
                f"ImageFeaturizer: inputCol '{column}' is not a column of the DataFrame "
                f"({', '.join(dataset.columns)}); set inputCol to its column of image bytes "
                f"(binaryFile's is 'content')"
            )
        if not isinstance(dataset.schema[column].dataType, BinaryType):
            raise ValueError(
                f"ImageFeaturizer: inputCol '{column}' is "
                f"{dataset.schema[column].dataType.simpleString()}, not binary: pass image "
                f"bytes, e.g. spark.read.format('binaryFile').load(paths)"
            )
        spark = dataset.sparkSession
        spec = self.spec().resolved()
        broadcast = self._broadcast(spark, spec)
        extract, _, _ = feature_udf(spark, spec, broadcast, self._model_key(spec))
        set_arrow_batch(spark, spec.batch_size)
        result = f"_{self.uid}_result"
        with runtime_environment(spark, spec.runtime):
            featurized = dataset.withColumn(result, extract(F.col(column)))
        return (
            featurized.withColumn(self.getOutputCol(), F.col(f"{result}.features"))
            .withColumn(self.getErrorCol(), F.col(f"{result}.error"))
            .drop(result)
        )

    def write(self) -> MLWriter:
        """A writer that saves the parameters and the weights in the stage's folder."""
        return _ImageFeaturizerWriter(self)

    @classmethod
    def read(cls) -> MLReader[ImageFeaturizer]:
        """A reader of folders written by :meth:`write` (alone or inside a PipelineModel)."""
        return _ImageFeaturizerReader(cls)


class _ImageFeaturizerWriter(MLWriter):
    """Saves ``metadata/`` (parameters, weights checksum) and ``weights/`` (Parquet)."""

    def __init__(self, instance: ImageFeaturizer) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        loaded = self.instance.loadedWeights()
        if isinstance(loaded.payload, bytes):
            extra: dict[str, Any] = {
                "weights_format": FILE_FORMAT,
                "weights_sha256": loaded.checksum,
                "weights_bytes": len(loaded.payload),
            }
            rows = [(0, FILE_FORMAT, "", loaded.payload)]
        else:
            arrays = loaded.payload
            extra = {
                "weights_format": ARRAYS_FORMAT,
                "weights_arrays_sha256": loaded.checksum,
                "weights_arrays": len(arrays),
            }
            rows = [
                (i, a.dtype.str, ",".join(map(str, a.shape)), np.ascontiguousarray(a).tobytes())
                for i, a in enumerate(arrays)
            ]
        DefaultParamsWriter.saveMetadata(
            self.instance, path, metadata_context(self.sparkSession), extraMetadata=extra
        )
        frame = self.sparkSession.createDataFrame(rows, _WEIGHTS_SCHEMA)
        frame.coalesce(1).write.mode("overwrite").parquet(f"{path}/{WEIGHTS_DIR}")
        log.info(
            "saved %s with its weights (%s, sha256 %s)",
            path,
            extra["weights_format"],
            loaded.checksum[:12],
        )


class _ImageFeaturizerReader(MLReader["ImageFeaturizer"]):
    """Loads a stage saved by :class:`_ImageFeaturizerWriter`, checking its weights."""

    def __init__(self, cls: type[ImageFeaturizer]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> ImageFeaturizer:
        metadata = DefaultParamsReader.loadMetadata(path, metadata_context(self.sparkSession))
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        instance.spec()
        rows = self.sparkSession.read.parquet(f"{path}/{WEIGHTS_DIR}").collect()
        rows.sort(key=lambda row: row["index"])
        if metadata.get("weights_format") == FILE_FORMAT:
            data = bytes(rows[0]["data"]) if len(rows) == 1 else b""
            found = hashlib.sha256(data).hexdigest()
            recorded = metadata.get("weights_sha256")
            whole = len(rows) == 1 and len(data) == metadata.get("weights_bytes")
            what = f"a weights file of {len(data)} bytes"
            loaded = Weights(data, found, instance.getWeights())
        else:
            arrays = [
                np.frombuffer(row["data"], dtype=np.dtype(row["dtype"]))
                .reshape([int(n) for n in row["shape"].split(",") if n])
                .copy()
                for row in rows
            ]
            found = weights_checksum(arrays)
            recorded = metadata.get("weights_arrays_sha256")
            whole = len(arrays) == metadata.get("weights_arrays")
            what = f"{len(arrays)} weight arrays"
            loaded = Weights(arrays, found, instance.getWeights())
        if found != recorded or not whole:
            raise ValueError(
                f"ImageFeaturizer at '{path}': its {WEIGHTS_DIR}/ hold {what} with SHA-256 "
                f"{found[:12]}..., not the weights {str(recorded)[:12]}... its metadata "
                f"records: the folder is damaged or incomplete; copy or save the model again"
            )
        instance._set_loaded(loaded, (instance.getModelName(), instance.getWeights()))
        return instance


#: Images of each class in each split the int8 report featurizes again in float32.
COMPARISON_PER_CLASS = 10


@dataclass(frozen=True)
class RuntimeComparison:
    """The same images' features from an int8 run and from float32 (``litert``): ``frame``
    has ``path, split, label, int8, float32`` (cached), ``per_class`` images of each class
    in each split at most, picked with ``seed``; or why there is none (``skipped``)."""

    frame: DataFrame | None
    per_class: int
    seed: int
    skipped: str | None = None


def int8_comparison(
    spark: SparkSession,
    output_root: str,
    features: DataFrame,
    *,
    per_class: int = COMPARISON_PER_CLASS,
    seed: int = 42,
) -> RuntimeComparison:
    """For features made by ``litert-int8`` (the committed records' ``int8_calibration``):
    a stratified, seeded sample of their Training and Test rows and the float32 features of
    the same images, made with the same model, size and weights (the manifest's
    ``features.weights``); the images are read through the listing of notebook 02's
    ``data_root``. For other features, ``skipped`` says there is nothing to compare."""
    settings = committed_settings(spark, output_root) or {}
    if "int8_calibration" not in settings:
        return RuntimeComparison(
            None, per_class, seed, "the features were not made by litert-int8: nothing to compare"
        )
    recorded = read_manifest(output_root).get("features", {})
    data_root = recorded.get("data_root")
    if not data_root:
        return RuntimeComparison(
            None, per_class, seed, "the manifest names no data_root: run notebook 02 again"
        )
    featurizer = ImageFeaturizer(
        inputCol="content",
        outputCol="float32",
        modelName=settings["model_name"],
        imageSize=int(settings["image_size"]),
        runtime="litert",
        weights=recorded.get("weights") or "imagenet",
    )
    if featurizer.weightsChecksum() != settings["weights_sha256"]:
        return RuntimeComparison(
            None,
            per_class,
            seed,
            f"the weights '{featurizer.getWeights()}' are not those of the features "
            f"(sha256 {str(settings['weights_sha256'])[:12]}...): pass them to notebook 02",
        )
    split = F.lower("split")
    order = Window.partitionBy(split, "label").orderBy(F.xxhash64("path", F.lit(seed)))
    sample = (
        features.where(F.col("error").isNull() & split.isin("training", "test"))
        .withColumn("_rank", F.row_number().over(order))
        .where(F.col("_rank") <= per_class)
        .select("path", "split", "label", F.col("features").alias("int8"))
    )
    paths = [row["path"] for row in sample.select("path").collect()]
    images = list_images(spark, data_root).images.where(F.col("path").isin(paths))
    parts = max(1, min(len(paths), default_parallelism(spark)))
    float32 = featurizer.transform(images.select("path", "content").repartition(parts))
    frame = sample.join(
        float32.where(F.col("error").isNull()).select("path", "float32"), "path"
    ).cache()
    log.info(
        "int8 comparison: %d of %d sampled images featurized in float32", frame.count(), len(paths)
    )
    return RuntimeComparison(frame, per_class, seed)
