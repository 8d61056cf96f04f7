"""``python -m helpers.emr plan``: the arithmetic of the estimate on hand-computed cases, the
command line (table and ``--json``), and bad input named. No AWS call, no Spark."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.emr import EmrSettings, instance_groups, main
from helpers.emr.estimate import (
    EMR_FEE_CAP,
    NOTEBOOK_COSTS,
    NOTEBOOKS,
    PRICES,
    SPOT_FRACTION,
    CostTerm,
    billed_seconds,
    estimate,
    instance_price,
    notebook_walls,
    parse_price,
    read_prices,
)
from helpers.paths import PROJECT_ROOT

pytestmark = pytest.mark.spark_neutral

#: Round numbers, so that every expected value below is computed by hand.
COSTS = (
    CostTerm("a", "fixed_s", 10.0, "start", "test"),
    CostTerm("a", "executor_core_ms", 1000.0, "per image, executors", "test"),
    CostTerm("b", "driver_ms", 500.0, "per image, driver", "test"),
)
PRICES_GIVEN = {"m5.xlarge": {"on_demand": 0.2, "spot": 0.1, "emr": 0.05}}


def _groups(**settings: Any) -> list[dict[str, Any]]:
    return instance_groups(EmrSettings(bucket="fruits-estimate", **settings))


def test_walls_by_hand() -> None:
    """a: 10 s + 80 images x 1 core-s / 8 vCPUs = 20 s; b: 80 x 0.5 s on the driver = 40 s."""
    walls = notebook_walls(80, executor_vcpus=8, costs=COSTS)
    assert [(w["notebook"], w["fixed_s"], w["per_image_s"], w["wall_s"]) for w in walls] == [
        ("a", 10.0, 10.0, 20.0),
        ("b", 0.0, 40.0, 40.0),
    ]
    slower = notebook_walls(80, executor_vcpus=8, core_speed=0.5, costs=COSTS)
    assert [w["wall_s"] for w in slower] == [40.0, 80.0]


def test_doubling_images_doubles_the_per_image_part() -> None:
    one, two = notebook_walls(50_000, 16), notebook_walls(100_000, 16)
    for a, b in zip(one, two, strict=True):
        assert b["fixed_s"] == a["fixed_s"]
        assert b["per_image_s"] == pytest.approx(2 * a["per_image_s"])
        assert b["wall_s"] == pytest.approx(a["wall_s"] + a["per_image_s"])
        assert b["wall_s"] < 2 * a["wall_s"]  # the fixed part is paid once


def test_more_core_nodes_cut_the_wall_where_executors_work() -> None:
    """Per-image parts run on the executors and get faster with more core nodes; a
    driver's per-image part (``driver_ms``) does not."""
    small = estimate(_groups(core_count=2, task_count=0), 100_000)
    large = estimate(_groups(core_count=8, task_count=0), 100_000)
    assert (small["executor_vcpus"], large["executor_vcpus"]) == (8, 32)
    walls = {
        w["notebook"]: (w, v) for w, v in zip(small["notebooks"], large["notebooks"], strict=True)
    }
    features_small, features_large = walls["02_feature_extraction"]
    assert features_large["per_image_s"] == pytest.approx(features_small["per_image_s"] / 4)
    for notebook in ("01_eda", "03_pca_tsne", "04_classifier"):
        before, after = walls[notebook]
        assert after["per_image_s"] == pytest.approx(before["per_image_s"] / 4)
        assert after["fixed_s"] == before["fixed_s"]
    driver = [CostTerm("05_report", "driver_ms", 2.0, "a report on the driver", "by hand")]
    small_driver, large_driver = (
        notebook_walls(100_000, vcpus, costs=driver)[0] for vcpus in (8, 32)
    )
    assert small_driver["wall_s"] == large_driver["wall_s"] == pytest.approx(200.0)
    assert large["time"]["notebooks_s"] < small["time"]["notebooks_s"]
    # task nodes add executors as core nodes do
    with_tasks = estimate(_groups(core_count=2, task_count=6), 100_000)
    assert with_tasks["executor_vcpus"] == 32
    assert with_tasks["time"]["notebooks_s"] == pytest.approx(large["time"]["notebooks_s"])


def test_cost_by_hand() -> None:
    """5 m5.xlarge (1 primary, 2 core on demand, 2 task on spot), 10 min start-up + 20 min
    of notebooks = 0.5 h each: on demand 5 x 0.5 x (0.2 + 0.05) = 0.625; spot 5 x 0.5 x
    (0.1 + 0.05) = 0.375; as deployed 3 x 0.125 + 2 x 0.075 = 0.525."""
    costs = (CostTerm("a", "fixed_s", 1200.0, "twenty minutes", "test"),)
    document = estimate(
        _groups(), 1, prices=PRICES_GIVEN, startup_minutes=10, idle_minutes=0, costs=costs
    )
    assert document["time"]["billed_s"] == 1800
    cost = document["cost_usd"]
    assert cost["on_demand"] == pytest.approx(0.625)
    assert cost["spot"] == pytest.approx(0.375)
    assert cost["as_deployed"] == pytest.approx(0.525)
    by_group = {g["name"]: g for g in document["cluster"]}
    assert by_group["core"]["on_demand_usd"] == pytest.approx(2 * 0.5 * 0.25)
    assert by_group["task-spot"]["spot_usd"] == pytest.approx(2 * 0.5 * 0.15)
    # the idle hour before auto-termination is billed too
    idle = estimate(
        _groups(), 1, prices=PRICES_GIVEN, startup_minutes=10, idle_minutes=60, costs=costs
    )
    assert idle["time"]["billed_s"] == 1800 + 3600
    assert idle["cost_usd"]["on_demand"] == pytest.approx(0.625 * 3)


def test_spot_is_cheaper_than_on_demand() -> None:
    document = estimate(_groups(), 100_000)
    for group in document["cluster"]:
        assert 0 < group["spot_usd"] < group["on_demand_usd"]
    cost = document["cost_usd"]
    assert cost["spot"] < cost["as_deployed"] < cost["on_demand"]


def test_one_minute_minimum() -> None:
    assert [billed_seconds(s) for s in (0, 5, 59.9, 60, 60.2, 3600)] == [60, 60, 60, 60, 61, 3600]
    costs = (CostTerm("a", "fixed_s", 5.0, "five seconds", "test"),)
    document = estimate(
        _groups(core_count=1, task_count=0),
        1,
        prices=PRICES_GIVEN,
        startup_minutes=0,
        idle_minutes=0,
        costs=costs,
    )
    assert document["time"]["billed_s"] == 60
    assert document["cost_usd"]["on_demand"] == pytest.approx(2 * 60 / 3600 * 0.25)


def test_instance_prices_follow_size() -> None:
    xlarge, double = instance_price("m5.xlarge"), instance_price("m5.2xlarge")
    assert (xlarge.vcpus, double.vcpus) == (4, 8)
    assert xlarge.on_demand == PRICES["m5"]["on_demand"]
    assert double.on_demand == pytest.approx(2 * xlarge.on_demand)
    assert double.emr == pytest.approx(2 * xlarge.emr)
    assert xlarge.spot == pytest.approx(SPOT_FRACTION * xlarge.on_demand)
    biggest = instance_price("m5.24xlarge")
    assert (biggest.vcpus, biggest.emr) == (96, EMR_FEE_CAP)
    assert instance_price("c5.9xlarge").vcpus == 36
    given = instance_price("m5.xlarge", {"m5.xlarge": {"spot": 0.05}})
    assert (given.on_demand, given.spot) == (xlarge.on_demand, 0.05)
    other = instance_price("m8g.xlarge", {"m8g.xlarge": {"vcpus": 4, "on_demand": 0.2}})
    assert (other.vcpus, other.on_demand, other.emr) == (4, 0.2, 0.0)


def test_unknown_instance_type_names_the_parameter() -> None:
    with pytest.raises(ValueError, match=r"--instance-type 'x9\.huge'.*m5\.\{large,xlarge"):
        instance_price("x9.huge")
    with pytest.raises(ValueError, match=r"--instance-type 'm5\.9xlarge'"):
        instance_price("m5.9xlarge")  # c5 has 9xlarge, m5 does not
    with pytest.raises(ValueError, match=r"--task-instance-type 'x9\.huge'"):
        estimate(_groups(task_instance_type="x9.huge"), 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("m5.xlarge=0.3", ("m5.xlarge", "on_demand", 0.3)),
        ("m5.xlarge:spot=0.08", ("m5.xlarge", "spot", 0.08)),
        ("c6i.2xlarge:emr=0", ("c6i.2xlarge", "emr", 0.0)),
    ],
)
def test_parse_price(text: str, expected: tuple[str, str, float]) -> None:
    assert parse_price(text) == expected


@pytest.mark.parametrize(
    "text", ["m5.xlarge", "m5.xlarge=abc", "m5.xlarge=-1", "m5.xlarge:ondemand=1", "=1", "x=nan"]
)
def test_malformed_price_names_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--price"):
        parse_price(text)


def test_prices_file(tmp_path: Path) -> None:
    good = tmp_path / "prices.json"
    good.write_text(json.dumps({"m5.xlarge": {"on_demand": 0.25, "spot": 0.09, "vcpus": 4}}))
    assert read_prices(good) == {"m5.xlarge": {"on_demand": 0.25, "spot": 0.09, "vcpus": 4}}
    for content, message in [
        ("{not json", "not a readable JSON"),
        ("[1, 2]", "JSON object"),
        ('{"m5.xlarge": {"on_demand": "cheap"}}', r"m5\.xlarge'\.on_demand: 'cheap'"),
        ('{"m5.xlarge": {"ondemand": 0.2}}', "unknown keys"),
        ('{"m5.xlarge": 0.2}', "must be an instance type"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(ValueError, match=f"--prices {bad}.*{message}"):
            read_prices(bad)
    with pytest.raises(FileNotFoundError, match="--prices"):
        read_prices(tmp_path / "missing.json")


@pytest.mark.parametrize("images", [0, -5])
def test_images_must_be_positive(images: int) -> None:
    with pytest.raises(ValueError, match=r"--images must be a whole number > 0"):
        estimate(_groups(), images)


def test_figures_cover_every_notebook_once_per_kind() -> None:
    """One table of figures, every notebook in it, each figure with its source."""
    stems = sorted(path.stem for path in (PROJECT_ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(NOTEBOOKS) == stems
    pairs = [(term.notebook, term.kind) for term in NOTEBOOK_COSTS]
    assert len(pairs) == len(set(pairs))
    for term in NOTEBOOK_COSTS:
        assert term.value > 0 and term.source and term.what
        assert term.kind in ("fixed_s", "executor_core_ms", "driver_ms")


def test_plan_json_is_the_cluster_deploy_would_start(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--images", "100000", "--core-count", "3", "--task-count", "1", "--json"]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    groups = _groups(core_count=3, task_count=1)
    assert [
        (g["role"], g["market"], g["instance_type"], g["count"]) for g in document["cluster"]
    ] == [(g["InstanceRole"], g["Market"], g["InstanceType"], g["InstanceCount"]) for g in groups]
    assert document["images"] == 100_000
    assert document["executor_vcpus"] == 16
    assert [w["notebook"] for w in document["notebooks"]] == list(NOTEBOOKS)
    time = document["time"]
    assert time["idle_s"] == 3600  # deploy keeps the cluster until it idles an hour
    expected = time["startup_s"] + time["notebooks_s"] + time["idle_s"]
    assert time["billed_s"] == pytest.approx(expected, abs=1)
    assert document["assumptions"] and document["figures"]

    assert main([*argv, "--batch", "--price", "m5.xlarge=1", "--price", "m5.xlarge:emr=0"]) == 0
    batch = json.loads(capsys.readouterr().out)
    assert batch["time"]["idle_s"] == 0
    hours = batch["time"]["billed_s"] / 3600
    assert batch["cost_usd"]["on_demand"] == pytest.approx(5 * hours, abs=1e-3)


def test_plan_prices_file_and_instance_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "paris.json"
    prices.write_text(json.dumps({"c6i.2xlarge": {"on_demand": 0.4, "spot": 0.15, "emr": 0.1}}))
    argv = ["plan", "--images", "20000", "--instance-type", "c6i.2xlarge", "--region", "eu-west-3"]
    assert main([*argv, "--prices", str(prices), "--json", "--task-count", "0"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {g["instance_type"] for g in document["cluster"]} == {"c6i.2xlarge"}
    assert document["executor_vcpus"] == 16
    assert document["cluster"][0]["price"] == {
        "vcpus": 8,
        "on_demand": 0.4,
        "spot": 0.15,
        "emr": 0.1,
    }
    # prices given for every type: no warning about eu-west-1's defaults
    assert not any("eu-west-1" in line for line in document["assumptions"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--images", "0"], "--images must be a whole number > 0"),
        (["--images", "-3"], "--images must be a whole number > 0"),
        (["--images", "10", "--instance-type", "x9.huge"], "--instance-type 'x9.huge'"),
        (["--images", "10", "--price", "m5.xlarge=free"], "--price 'm5.xlarge=free'"),
        (["--images", "10", "--prices", "/nonexistent/p.json"], "--prices /nonexistent"),
        (["--images", "10", "--core-speed", "0"], "--core-speed must be a number > 0"),
        (["--images", "10", "--startup-minutes", "-1"], "--startup-minutes must be >= 0"),
        (["--images", "10", "--core-count", "0"], "core_count must be at least 1"),
    ],
)
def test_plan_bad_input_is_named(
    args: list[str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["plan", *args]) == 2
    assert message in caplog.text


def test_plan_command_line_prints_a_table() -> None:
    """The module's own command line, as a user runs it: a table, the assumptions, no AWS."""
    result = subprocess.run(
        [sys.executable, "-m", "helpers.emr", "plan", "--images", "100000"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("Estimate for 100,000 images", "m5.xlarge", "all four", "Assumptions:"):
        assert text in out
    for notebook in NOTEBOOKS:
        assert notebook in out
    assert "on demand" in out and "spot" in out
    bad = subprocess.run(
        [sys.executable, "-m", "helpers.emr", "plan", "--images", "many"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "--images" in bad.stderr
