"""What a run on EMR would take and cost, before a cluster starts (``python -m helpers.emr
plan --images N``).

The cluster is the one :func:`helpers.emr.cluster.instance_groups` puts in the RunJobFlow
request: the primary node runs the notebooks' drivers, the core and task nodes run the
executors. Each notebook's wall time is

    fixed seconds + images x executor core-seconds per image / executor vCPUs
                  + images x driver seconds per image

all divided by ``core_speed`` (a cluster vCPU against a core of the benchmark machine), with
the figures of :data:`NOTEBOOK_COSTS`, measured in ``bench/README.md``. The cluster is billed
per instance and per second, at least one minute, for its start-up, the notebooks one after
the other, and, unless it terminates after its step (``--batch``), the idle time before
auto-termination. Prices are EC2's (on demand or spot) plus EMR's per-instance fee, from
:data:`PRICES` (eu-west-1) or the caller's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# --- the measured figures -------------------------------------------------------------------

#: The benchmark machine (bench/README.md): 2 cores, local[2]; figures are per core of it.
BENCH_CORES = 2


@dataclass(frozen=True)
class CostTerm:
    """One part of a notebook's cost, as measured on the benchmark machine.

    ``kind``: ``fixed_s`` (seconds whatever the images: start-up, fixed-size samples),
    ``executor_core_ms`` (core-milliseconds per image on the executors: divided by the
    cluster's executor vCPUs) or ``driver_ms`` (milliseconds per image on the driver, the
    primary node: the cluster's size does not change it).
    """

    notebook: str
    kind: str
    value: float
    what: str
    source: str


KINDS = ("fixed_s", "executor_core_ms", "driver_ms")

#: Every figure the estimate reads; the scale table at 100,000 images replaces them here.
#: Slopes and intercepts are of the lines through the two largest sizes measured (the linear
#: regime); "2 cores" figures are wall time on the benchmark machine, so core-ms = 2 x ms.
NOTEBOOK_COSTS: tuple[CostTerm, ...] = (
    CostTerm(
        "01_eda",
        "fixed_s",
        34.3,
        "start-up, and the seeded samples of 30 images per class (fixed once a class has 30)",
        "bench/README.md, Scale table (155 classes), 01_eda: 48.0 s at 23,175, 93.5 s at "
        "100,000 images (intercept)",
    ),
    CostTerm(
        "01_eda",
        "executor_core_ms",
        1.185,
        "listing, counts, hashes and header checks of every file; the samples' scans",
        "same line's slope: 0.592 ms per image on 2 cores",
    ),
    CostTerm(
        "02_feature_extraction",
        "fixed_s",
        15.2,
        "start-up: kernel, session, model build and broadcast",
        "bench/README.md, Scale table (155 classes), 02_feature_extraction: 114.4 s at "
        "23,175, 443.3 s at 100,000 images (intercept)",
    ),
    CostTerm(
        "02_feature_extraction",
        "executor_core_ms",
        8.562,
        "decode, resize, MobileNetV2 at 224 px (litert), Arrow, Parquet: 234 img/s on 2 cores",
        "same line's slope: 4.281 ms per image on 2 cores",
    ),
    CostTerm(
        "03_pca_tsne",
        "fixed_s",
        41.7,
        "start-up, t-SNE of the fixed sample (2,000 points) and the linear probes (at most "
        "100 images per class and split), on the driver",
        "bench/README.md, Scale table (155 classes), 03_pca_tsne: 52.3 s at 23,175, 87.6 s "
        "at 100,000 images (intercept)",
    ),
    CostTerm(
        "03_pca_tsne",
        "executor_core_ms",
        0.919,
        "the PCA fit's pass over the features, then the reduced rows' transform and write",
        "same line's slope: 0.459 ms per image on 2 cores",
    ),
    CostTerm(
        "04_classifier",
        "fixed_s",
        36.1,
        "start-up, saving the PipelineModel, its check on a few images",
        "bench/README.md, Scale table (155 classes), 04_classifier: 71.4 s at 23,175, "
        "188.3 s at 100,000 images (intercept)",
    ),
    CostTerm(
        "04_classifier",
        "executor_core_ms",
        3.043,
        "Spark ML multinomial logistic regression on the PCA features (155 classes, k = 631, "
        "170-200 iterations), full JIT and Java's Vector API",
        "same line's slope: 1.522 ms per image on 2 cores",
    ),
)

NOTEBOOKS = tuple(dict.fromkeys(term.notebook for term in NOTEBOOK_COSTS))

# --- instances and prices -------------------------------------------------------------------

#: vCPUs of each size (AWS instance type pages); which sizes each family has.
SIZE_VCPUS = {
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
    "8xlarge": 32,
    "9xlarge": 36,
    "12xlarge": 48,
    "16xlarge": 64,
    "18xlarge": 72,
    "24xlarge": 96,
    "32xlarge": 128,
    "48xlarge": 192,
}
_COMMON = ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge")
FAMILY_SIZES = {
    "m5": _COMMON,
    "r5": _COMMON,
    "c5": ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge"),
    "m6i": (*_COMMON, "32xlarge"),
    "c6i": (*_COMMON, "32xlarge"),
    "m7i": (*_COMMON, "48xlarge"),
}

#: eu-west-1 (Ireland) list prices in USD per hour of an xlarge (4 vCPUs): EC2 on demand
#: (Linux) and EMR's fee; other sizes in proportion to their vCPUs (AWS prices these families
#: so), EMR's fee at most EMR_FEE_CAP. Approximate, as of 2026-12-07: there is no internet
#: here; they are the published list prices as the author knows them, checked against
#: third-party copies of the price lists (aws.amazon.com/ec2/pricing/on-demand and
#: aws.amazon.com/emr/pricing are the sources). Check them before relying on a figure.
PRICES = {
    "m5": {"on_demand": 0.214, "emr": 0.048},
    "m6i": {"on_demand": 0.214, "emr": 0.048},
    "m7i": {"on_demand": 0.2247, "emr": 0.0504},
    "c5": {"on_demand": 0.192, "emr": 0.043},
    "c6i": {"on_demand": 0.192, "emr": 0.043},
    "r5": {"on_demand": 0.282, "emr": 0.063},
}
PRICES_REGION = "eu-west-1"
PRICES_DATE = "2026-12-07"
#: EMR's per-instance fee stops growing with size at this (8xlarge and up), USD per hour.
EMR_FEE_CAP = 0.27
#: Spot price as a share of on demand: an assumption (spot prices move with demand; the
#: Spot Instance Advisor showed 50-70% savings for these families in eu-west-1).
SPOT_FRACTION = 0.40
#: Provisioning plus bootstrap-emr.sh (the pinned set from PyPI): not measured here.
STARTUP_MINUTES = 8.0
MIN_BILLED_S = 60  # EMR and EC2 bill per second, one minute at least
_PRICE_KEYS = ("on_demand", "spot", "emr")
_TYPE_RE = re.compile(r"^([a-z][a-z0-9-]*)\.([a-z0-9]+)$")


@dataclass(frozen=True)
class InstancePrice:
    """USD per hour of one instance: EC2 on demand and spot, EMR's fee (either market)."""

    vcpus: int
    on_demand: float
    spot: float
    emr: float


def known_types() -> list[str]:
    """Every instance type of the built-in table (vCPUs and default prices)."""
    return [f"{family}.{size}" for family, sizes in FAMILY_SIZES.items() for size in sizes]


def _known_types_text() -> str:
    return ", ".join(f"{family}.{{{','.join(sizes)}}}" for family, sizes in FAMILY_SIZES.items())


def instance_price(
    instance_type: str,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
    parameter: str = "--instance-type",
) -> InstancePrice:
    """vCPUs and prices of ``instance_type``: the built-in eu-west-1 table, then
    ``overrides[instance_type]`` (keys ``on_demand``, ``spot``, ``emr``, ``vcpus``); a type
    outside the table needs ``vcpus`` and ``on_demand`` there. A spot price not given is
    :data:`SPOT_FRACTION` of on demand."""
    given = dict((overrides or {}).get(instance_type, {}))
    match = _TYPE_RE.match(instance_type)
    family, size = match.groups() if match else ("", "")
    if family in FAMILY_SIZES and size in FAMILY_SIZES[family]:
        vcpus = SIZE_VCPUS[size]
        scale = vcpus / SIZE_VCPUS["xlarge"]
        base = PRICES[family]
        values: dict[str, float] = {
            "vcpus": vcpus,
            "on_demand": round(base["on_demand"] * scale, 6),
            "emr": round(min(base["emr"] * scale, EMR_FEE_CAP), 6),
        }
    elif {"vcpus", "on_demand"} <= given.keys():
        values = {"emr": 0.0}
    else:
        raise ValueError(
            f"{parameter} '{instance_type}' is not in the estimate's table (known: "
            f"{_known_types_text()}); give its 'vcpus', 'on_demand' (and 'emr') USD per hour "
            "in --prices FILE.json to estimate it"
        )
    values.update(given)
    if "spot" not in given:
        values["spot"] = round(values["on_demand"] * SPOT_FRACTION, 6)
    vcpus = values["vcpus"]
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1:
        raise ValueError(f"vcpus of '{instance_type}' must be a whole number >= 1, got {vcpus!r}")
    return InstancePrice(
        vcpus=vcpus, on_demand=values["on_demand"], spot=values["spot"], emr=values["emr"]
    )


def _usd(value: Any, where: str) -> float:
    """A price: a number >= 0 (USD per hour), else ValueError naming ``where``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: '{value}' is not a price in USD per hour (a number >= 0)")
    return number


def parse_price(text: str) -> tuple[str, str, float]:
    """``TYPE=USD`` (on demand), ``TYPE:spot=USD`` or ``TYPE:emr=USD``, from ``--price``."""
    name, sep, value = text.partition("=")
    instance_type, _, key = name.partition(":")
    key = key or "on_demand"
    if not sep or not _TYPE_RE.match(instance_type) or key not in _PRICE_KEYS:
        raise ValueError(
            f"--price '{text}' must be TYPE=USD, TYPE:spot=USD or TYPE:emr=USD "
            "(USD per hour of one instance), e.g. m5.xlarge=0.214 or m5.xlarge:spot=0.08"
        )
    return instance_type, key, _usd(value, f"--price '{text}'")


def read_prices(path: Path) -> dict[str, dict[str, float]]:
    """A ``--prices`` file: ``{"m5.xlarge": {"on_demand": 0.214, "spot": 0.08, "emr":
    0.048, "vcpus": 4}, ...}`` (any of the keys; USD per hour of one instance)."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--prices {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--prices {path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError(f"--prices {path}: must be a JSON object of instance types")
    prices: dict[str, dict[str, float]] = {}
    for instance_type, entry in document.items():
        where = f"--prices {path}, '{instance_type}'"
        if not _TYPE_RE.match(str(instance_type)) or not isinstance(entry, dict):
            raise ValueError(
                f"{where}: each entry must be an instance type (e.g. 'm5.xlarge') mapped to "
                f"an object of {', '.join(_PRICE_KEYS)} (USD per hour) and vcpus"
            )
        unknown = set(entry) - {*_PRICE_KEYS, "vcpus"}
        if unknown:
            raise ValueError(
                f"{where}: unknown keys {sorted(unknown)}; use {', '.join(_PRICE_KEYS)}, vcpus"
            )
        values: dict[str, Any] = {
            k: v if k == "vcpus" else _usd(v, f"{where}.{k}") for k, v in entry.items()
        }
        prices[instance_type] = values
    return prices


# --- the estimate ---------------------------------------------------------------------------


def _positive(name: str, value: float, parameter: str, whole: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) if whole else True
    if not ok or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{parameter} must be {kind} > 0 ({name}), got {value!r}")


def notebook_walls(
    images: int,
    executor_vcpus: int,
    core_speed: float = 1.0,
    costs: Sequence[CostTerm] = NOTEBOOK_COSTS,
) -> list[dict[str, Any]]:
    """Each notebook's expected wall time in seconds, with its fixed and per-image parts."""
    _positive("images", images, "--images", whole=True)
    _positive("executor vCPUs", executor_vcpus, "--core-count", whole=True)
    _positive("core speed", core_speed, "--core-speed")
    walls = []
    for notebook in dict.fromkeys(term.notebook for term in costs):
        parts = dict.fromkeys(KINDS, 0.0)
        for term in costs:
            if term.notebook == notebook:
                parts[term.kind] += term.value
        fixed = parts["fixed_s"] / core_speed
        executors = images * parts["executor_core_ms"] / 1000 / executor_vcpus / core_speed
        driver = images * parts["driver_ms"] / 1000 / core_speed
        walls.append(
            {
                "notebook": notebook,
                "fixed_s": fixed,
                "per_image_s": executors + driver,
                "wall_s": fixed + executors + driver,
            }
        )
    return walls


def billed_seconds(seconds: float) -> int:
    """Seconds EMR and EC2 bill for an instance up ``seconds``: whole, one minute at least."""
    return max(MIN_BILLED_S, math.ceil(seconds))


def estimate(
    groups: Sequence[Mapping[str, Any]],
    images: int,
    *,
    prices: Mapping[str, Mapping[str, float]] | None = None,
    startup_minutes: float = STARTUP_MINUTES,
    idle_minutes: float = 0.0,
    core_speed: float = 1.0,
    region: str = PRICES_REGION,
    costs: Sequence[CostTerm] = NOTEBOOK_COSTS,
) -> dict[str, Any]:
    """The expected wall time of each notebook and the cost of the cluster, as one
    JSON-ready document.

    ``groups`` are RunJobFlow InstanceGroups (:func:`~helpers.emr.cluster.instance_groups`):
    executors run on the CORE and TASK groups. ``idle_minutes``: how long the cluster
    stays up after the notebooks (its auto-termination time, 0 for a batch cluster).
    Costs: every group on demand, every group on spot, and as deployed (each group in its
    own ``Market``); EMR's fee is the same in both markets.
    """
    _positive("images", images, "--images", whole=True)
    if not math.isfinite(startup_minutes) or startup_minutes < 0:
        raise ValueError(f"--startup-minutes must be >= 0, got {startup_minutes!r}")
    if not math.isfinite(idle_minutes) or idle_minutes < 0:
        raise ValueError(f"--idle-minutes must be >= 0, got {idle_minutes!r}")
    cluster = []
    for group in groups:
        parameter = "--task-instance-type" if group["InstanceRole"] == "TASK" else "--instance-type"
        price = instance_price(group["InstanceType"], prices, parameter)
        cluster.append(
            {
                "name": group["Name"],
                "role": group["InstanceRole"],
                "market": group["Market"],
                "instance_type": group["InstanceType"],
                "count": group["InstanceCount"],
                "vcpus": price.vcpus,
                "price": asdict(price),
            }
        )
    executor_vcpus = sum(g["count"] * g["vcpus"] for g in cluster if g["role"] != "MASTER")
    walls = notebook_walls(images, executor_vcpus, core_speed, costs)
    run_s = sum(w["wall_s"] for w in walls)
    up_s = startup_minutes * 60 + run_s + idle_minutes * 60
    billed_h = billed_seconds(up_s) / 3600
    totals = {"on_demand": 0.0, "spot": 0.0, "as_deployed": 0.0}
    for group in cluster:
        price, hours = group["price"], group["count"] * billed_h
        group["on_demand_usd"] = hours * (price["on_demand"] + price["emr"])
        group["spot_usd"] = hours * (price["spot"] + price["emr"])
        totals["on_demand"] += group["on_demand_usd"]
        totals["spot"] += group["spot_usd"]
        market = "spot_usd" if group["market"] == "SPOT" else "on_demand_usd"
        totals["as_deployed"] += group[market]
    return {
        "images": images,
        "cluster": cluster,
        "executor_vcpus": executor_vcpus,
        "notebooks": walls,
        "time": {
            "startup_s": startup_minutes * 60,
            "notebooks_s": run_s,
            "idle_s": idle_minutes * 60,
            "billed_s": billed_seconds(up_s),
        },
        "cost_usd": totals,
        "assumptions": assumptions(
            startup_minutes, idle_minutes, core_speed, region, prices or {}, cluster
        ),
        "figures": [asdict(term) for term in costs],
    }


def assumptions(
    startup_minutes: float,
    idle_minutes: float,
    core_speed: float,
    region: str,
    prices: Mapping[str, Any],
    cluster: Sequence[Mapping[str, Any]],
) -> list[str]:
    """What the estimate takes for granted, in words, for the reader of the estimate."""
    lines = [
        f"per-image figures measured on a {BENCH_CORES}-core machine (bench/README.md; see "
        "'figures'); one cluster vCPU does the work of "
        f"{core_speed:g} of its cores (--core-speed)",
        "executors use every vCPU of the core and task nodes; the primary node runs the "
        "drivers (t-SNE and the linear probes: they do not get faster with more nodes)",
        "the notebooks run one after the other in one step, images read from S3 as fast as "
        "from the benchmark's disk; nothing is cached from an earlier run",
        "figures measured on 155 classes (as today's Fruits-360) up to 100,000 images; "
        "notebook 04's per-image part grows with the classes and the PCA's k",
        f"cluster start-up (provisioning, bootstrap): {startup_minutes:g} min "
        "(--startup-minutes; not measured here)",
        f"after the notebooks the cluster stays up {idle_minutes:g} min "
        + ("(auto-termination; --batch ends it with the step)" if idle_minutes else "(--batch)"),
        f"billing: every instance for the whole time, per second, {MIN_BILLED_S} s at least; "
        "EC2 price plus EMR's per-instance fee, in both markets; no EBS, S3 or transfer costs",
    ]
    defaults = [g["instance_type"] for g in cluster if g["instance_type"] not in prices]
    if defaults:
        lines.append(
            f"prices: {PRICES_REGION} list prices as of {PRICES_DATE}, approximate (see "
            f"helpers/emr/estimate.py) for {', '.join(dict.fromkeys(defaults))}; "
            "--price or --prices FILE.json to give yours"
        )
    if region != PRICES_REGION and defaults:
        lines.append(
            f"the cluster's region is {region}, the default prices are {PRICES_REGION}'s "
            "(Paris and Frankfurt cost about 5-8% more): pass that region's prices"
        )
    if any("spot" not in prices.get(g["instance_type"], {}) for g in cluster):
        lines.append(
            f"spot price: {SPOT_FRACTION:g} x on demand unless given (spot prices move; a "
            "reclaimed task node's work is redone by the others)"
        )
    return lines


def format_estimate(document: Mapping[str, Any]) -> str:
    """The estimate as a readable table: cluster, notebooks, time, cost, assumptions."""
    lines = [f"Estimate for {document['images']:,} images", "", "Cluster (as deploy starts it):"]
    lines.append(
        f"  {'group':<10} {'role':<7} {'market':<10} {'type':<12} {'count':>5} {'vCPUs':>6} "
        f"{'USD/h on demand':>16} {'USD/h spot':>11}"
    )
    for g in document["cluster"]:
        price = g["price"]
        lines.append(
            f"  {g['name']:<10} {g['role']:<7} {g['market']:<10} {g['instance_type']:<12} "
            f"{g['count']:>5} {g['count'] * g['vcpus']:>6} "
            f"{price['on_demand'] + price['emr']:>16.4f} {price['spot'] + price['emr']:>11.4f}"
        )
    lines.append(f"  executors on {document['executor_vcpus']} vCPUs; USD/h include EMR's fee")
    lines += ["", "Notebooks (expected wall time):"]
    for w in document["notebooks"]:
        lines.append(
            f"  {w['notebook']:<24} {_duration(w['wall_s']):>11}   "
            f"(fixed {_duration(w['fixed_s'])}, images {_duration(w['per_image_s'])})"
        )
    time = document["time"]
    lines += [
        f"  {'all four':<24} {_duration(time['notebooks_s']):>11}",
        "",
        f"Cluster up: {_duration(time['startup_s'])} start-up + "
        f"{_duration(time['notebooks_s'])} notebooks + {_duration(time['idle_s'])} idle = "
        f"{_duration(time['billed_s'])} billed per instance",
        "",
        "Cost (USD):",
    ]
    for g in document["cluster"]:
        lines.append(
            f"  {g['name']:<10} on demand {g['on_demand_usd']:>9.2f}   spot {g['spot_usd']:>9.2f}"
        )
    cost = document["cost_usd"]
    lines += [
        f"  {'total':<10} on demand {cost['on_demand']:>9.2f}   spot {cost['spot']:>9.2f}",
        f"  as deployed (each group in its market): {cost['as_deployed']:.2f}",
        "",
        "Assumptions:",
        *(f"  - {line}" for line in document["assumptions"]),
        "",
        "Figures (benchmark machine; bench/README.md):",
    ]
    units = {"fixed_s": "s", "executor_core_ms": "core-ms/image", "driver_ms": "ms/image (driver)"}
    for term in document["figures"]:
        lines.append(
            f"  {term['notebook']:<24} {term['value']:>8g} {units[term['kind']]:<18} {term['what']}"
        )
    return "\n".join(lines)


def rounded(document: Any, digits: int = 4) -> Any:
    """``document`` with every float rounded to ``digits`` decimals (for ``--json``)."""
    if isinstance(document, dict):
        return {key: rounded(value, digits) for key, value in document.items()}
    if isinstance(document, list):
        return [rounded(value, digits) for value in document]
    return round(document, digits) if isinstance(document, float) else document


def _duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 20 s`` or ``45 s``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
