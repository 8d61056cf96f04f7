"""PCA fit time: the project's Spark ML fit against scikit-learn on the same matrix.

    python bench/pca.py --features OUTPUT_ROOT/features [--limit N] [--repeat 3] [--spark-pca]

Both sides fit a StandardScaler (mean and std) and a full-spectrum PCA on the rows of a
features Parquet that have features (``error`` null), in one process on this machine:

- Spark: :func:`helpers.reduce.fit_reduction`, exactly as notebook 03 calls it. The
  SparkSession is started, the input DataFrame read, cached and counted before the clock
  starts; only the fit is timed.
- scikit-learn: ``StandardScaler`` then ``PCA(svd_solver="covariance_eigh")`` on the same
  float64 matrix (loaded with pyarrow, not timed). That solver is the fair equivalent: like
  ``fit_reduction`` it builds the d x d covariance with one BLAS-3 product and decomposes
  it. ``svd_solver="full"`` (an SVD of the whole n x d matrix, what scikit-learn's default
  picks for this shape) is timed too, for information; so, with ``--spark-pca``, is Spark
  ML's own ``StandardScaler.fit`` + ``PCA.fit``, which ``fit_reduction`` replaces.

Each fit runs ``--repeat`` times, taking turns with the others, and keeps its best time.
The table checks that both give the same explained-variance spectrum (to 1e-6) and the
same k at 0.95; the last line is ``spark_s=<x> sklearn_s=<y> ratio=<x/y>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pyspark.ml.feature import PCA as SparkPCA
from pyspark.ml.feature import StandardScaler as SparkScaler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from helpers.reduce import Reduction, choose_k, fit_reduction, usable_features
from helpers.spark.session import get_spark

VARIANCE = 0.95
PAUSE = 0.5  # seconds of rest before each timed fit


def load_matrix(features: Path, limit: int) -> np.ndarray:
    """The good rows' features as a float64 matrix (with ``limit``: the first N by path)."""
    table = pq.read_table(features, columns=["path", "features", "error"])
    frame = table.to_pandas()
    frame = frame[frame["error"].isna()]
    if limit:
        frame = frame.sort_values("path").head(limit)
    return np.stack(frame["features"].to_numpy()).astype(np.float64)


def sklearn_fit(matrix: np.ndarray, solver: str) -> np.ndarray:
    """StandardScaler + full-spectrum PCA; the explained-variance ratios."""
    scaled = StandardScaler().fit_transform(matrix)
    return PCA(svd_solver=solver).fit(scaled).explained_variance_ratio_


def spark_ml_pca_fit(frame: DataFrame) -> np.ndarray:
    """The textbook Spark ML fit: ``StandardScaler`` then ``PCA(k=d).fit`` (``RowMatrix``)."""
    vectors = usable_features(frame)
    scaler = SparkScaler(withMean=True, withStd=True, inputCol="vector", outputCol="scaled")
    scaled = scaler.fit(vectors).transform(vectors)
    dim = len(vectors.first()["vector"])
    pca = SparkPCA(k=dim, inputCol="scaled", outputCol="pca").fit(scaled)
    return pca.explainedVariance.toArray()


def interleaved(
    repeat: int, fits: dict[str, Callable[[], np.ndarray]]
) -> dict[str, tuple[float, np.ndarray]]:
    """Each fit's shortest time over ``repeat`` rounds, and its spectrum.

    The fits take turns within each round, so a change in the machine's load (other
    processes) hits all of them alike instead of one side's whole series. Each starts
    after a ``PAUSE``: OpenBLAS threads spin for about 0.1 s after a call, and the previous
    fit's would otherwise take the cores from the next (measured: Spark's fit 10% slower).
    """
    times: dict[str, list[float]] = {name: [] for name in fits}
    spectra: dict[str, np.ndarray] = {}
    for _ in range(repeat):
        for name, fit in fits.items():
            time.sleep(PAUSE)
            started = time.perf_counter()
            spectra[name] = fit()
            times[name].append(time.perf_counter() - started)
    return {name: (min(times[name]), spectra[name]) for name in fits}


def spectrum_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference between two spectra, the shorter padded with zeros (n < d)."""
    size = max(len(a), len(b))
    return float(np.max(np.abs(np.pad(a, (0, size - len(a))) - np.pad(b, (0, size - len(b))))))


def spark_input(features: Path, limit: int, scratch: Path) -> DataFrame:
    """The features Parquet as Spark reads it, cached and counted (neither is timed).

    With ``limit``, the first N good rows by path are written to ``scratch`` first, one file
    per core as notebook 02 writes them, and read from there: notebook 03 fits a plain scan
    of feature files, which :func:`helpers.reduce.fit_reduction` reads with pyarrow.
    """
    spark = get_spark("bench-pca")
    frame = spark.read.parquet(str(features.resolve()))
    if limit:
        rows = frame.where(F.col("error").isNull()).orderBy("path").limit(limit)
        rows.repartition(spark.sparkContext.defaultParallelism).write.parquet(str(scratch))
        frame = spark.read.parquet(str(scratch))
    frame = frame.cache()
    frame.count()
    return frame


def main(argv: list[str] | None = None) -> int:
    """Run both fits, print the table and the ratio line."""
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="features Parquet folder")
    parser.add_argument("--limit", type=int, default=0, help="use the first N good rows only")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side, best kept")
    parser.add_argument(
        "--spark-pca",
        action="store_true",
        help="also time Spark ML's own PCA.fit (what fit_reduction replaced; slow)",
    )
    args = parser.parse_args(argv)

    matrix = load_matrix(args.features, args.limit)
    rows, cols = matrix.shape
    scratch = tempfile.TemporaryDirectory(prefix="bench-pca-")  # removed on exit, even failed
    frame = spark_input(args.features, args.limit, Path(scratch.name) / "rows")
    partitions = frame.rdd.getNumPartitions()

    reductions: list[Reduction] = []

    def spark_fit() -> np.ndarray:
        reductions.append(fit_reduction(frame, variance=VARIANCE))
        return reductions[-1].explained_variance

    fits = {
        "spark": spark_fit,
        "eigh": lambda: sklearn_fit(matrix, "covariance_eigh"),
        "full": lambda: sklearn_fit(matrix, "full"),
    }
    if args.spark_pca:
        fits["spark_pca"] = lambda: spark_ml_pca_fit(frame)
    spark_fit()  # warm-ups, not timed: JIT, first use of the code paths
    sklearn_fit(matrix[: min(rows, 500)], "covariance_eigh")
    results = interleaved(args.repeat, fits)
    scratch.cleanup()
    reduction = reductions[-1]
    (spark_s, spark_ev), (sklearn_s, sklearn_ev) = results["spark"], results["eigh"]
    full_s, full_ev = results["full"]
    load = os.getloadavg()[0]

    gap = spectrum_gap(spark_ev, sklearn_ev)
    gap_full = spectrum_gap(full_ev, sklearn_ev)
    k_spark, k_sklearn = reduction.k, choose_k(sklearn_ev, VARIANCE)
    print(
        f"rows={rows} columns={cols} spark_partitions={partitions} repeat={args.repeat} "
        f"cores={os.cpu_count()} load_1min={load:.1f}"
    )
    print(f"{'fit':<38}{'seconds':>9}  {'k@0.95':>6}  {'max |ev - ev_eigh|':>18}")
    print(f"{'spark fit_reduction':<38}{spark_s:>9.2f}  {k_spark:>6}  {gap:>18.1e}")
    print(
        f"{'sklearn covariance_eigh (reference)':<38}{sklearn_s:>9.2f}  {k_sklearn:>6}  {0:>18.1e}"
    )
    print(
        f"{'sklearn full SVD (for information)':<38}{full_s:>9.2f}  "
        f"{choose_k(full_ev, VARIANCE):>6}  {gap_full:>18.1e}"
    )
    if args.spark_pca:
        pca_s, pca_ev = results["spark_pca"]
        print(
            f"{'spark StandardScaler + PCA.fit (info)':<38}{pca_s:>9.2f}  "
            f"{choose_k(pca_ev, VARIANCE):>6}  {spectrum_gap(pca_ev, sklearn_ev):>18.1e}"
        )
    same = gap <= 1e-6 and k_spark == k_sklearn and reduction.rows == rows
    print(f"same spectrum (1e-6) and same k: {'yes' if same else 'NO'}")
    print(f"spark_s={spark_s:.3f} sklearn_s={sklearn_s:.3f} ratio={spark_s / sklearn_s:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
