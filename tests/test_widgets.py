"""Databricks widgets override the parameters cell; elsewhere nothing changes.

``FakeDbutils`` stands in for the Databricks runtime's ``dbutils`` object (only its
``widgets.get``/``widgets.text`` are used): getting a widget that was never defined raises,
as Databricks does.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from helpers.config import PARAMETERS, coerce
from helpers.paths import PROJECT_ROOT
from helpers.widgets import read_widgets

_KINDS = {p.name: p.type for p in PARAMETERS}


class WidgetNotDefined(Exception):
    """What Databricks raises for an undefined widget (InputWidgetNotDefined)."""


class FakeWidgets:
    """``dbutils.widgets``: values set by a job, and the widgets the notebook created."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)
        self.created: dict[str, str] = {}

    def get(self, name: str) -> str:
        if name not in self.values:
            raise WidgetNotDefined(f"No input widget named {name} is defined")
        return self.values[name]

    def text(self, name: str, default_value: str, label: str | None = None) -> None:
        self.created[name] = default_value
        self.values.setdefault(name, default_value)


class FakeDbutils:
    """The part of Databricks' ``dbutils`` the notebooks use."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.widgets = FakeWidgets(values or {})


def _cell() -> dict:
    """A notebook namespace after a parameters cell (and unrelated names)."""
    return {
        "data_root": "data_sample",
        "output_root": "outputs",
        "pca_k": 0,
        "pca_variance": 0.95,
        "overwrite": False,
        "spark": object(),
        "__name__": "__main__",
    }


def test_without_dbutils_nothing_changes() -> None:
    """papermill, Jupyter, EMR: the parameters come back as the cell set them."""
    namespace = _cell()
    assert read_widgets(namespace) == {
        "data_root": "data_sample",
        "output_root": "outputs",
        "pca_k": 0,
        "pca_variance": 0.95,
        "overwrite": False,
    }


def test_job_parameters_override_and_are_typed() -> None:
    """Widget strings replace the defaults, converted to each parameter's type."""
    namespace = _cell()
    namespace["dbutils"] = FakeDbutils(
        {
            "data_root": "/Volumes/main/fruits/images",
            "pca_k": "50",
            "pca_variance": "0.9",
            "overwrite": "true",
            "unrelated": "x",
        }
    )
    values = read_widgets(namespace)
    assert values == {
        "data_root": "/Volumes/main/fruits/images",
        "output_root": "outputs",
        "pca_k": 50,
        "pca_variance": 0.9,
        "overwrite": True,
    }
    namespace.update(values)  # what the notebook line does
    assert namespace["pca_k"] == 50 and isinstance(namespace["overwrite"], bool)
    assert "unrelated" not in values


def test_missing_widgets_are_created_with_the_defaults() -> None:
    """Interactively, each parameter without a widget gets one showing its default."""
    dbutils = FakeDbutils({"pca_k": "7"})
    values = read_widgets(_cell(), dbutils)
    assert values["pca_k"] == 7
    assert dbutils.widgets.created == {
        "data_root": "data_sample",
        "output_root": "outputs",
        "pca_variance": "0.95",
        "overwrite": "false",
    }
    assert read_widgets(_cell(), dbutils) == values  # idempotent: the widgets now exist


def test_bad_widget_value_names_the_parameter() -> None:
    """A value that does not fit the parameter's type raises, naming it."""
    with pytest.raises(ValueError, match="parameter 'pca_k' must be int, got 'fifty'"):
        read_widgets(_cell(), FakeDbutils({"pca_k": "fifty"}))
    with pytest.raises(ValueError, match="parameter 'overwrite' must be true or false"):
        read_widgets(_cell(), FakeDbutils({"overwrite": "maybe"}))


@pytest.mark.parametrize("notebook", sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb")))
def test_the_line_after_each_parameters_cell(notebook: Path) -> None:
    """Each notebook's parameters cell then `globals().update(read_widgets(globals()))`:
    unchanged without dbutils; with one, every declared parameter takes its widget."""
    cells = nbformat.read(notebook, as_version=4).cells
    source = next(c.source for c in cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(source, namespace)  # the parameters cell: typed assignments only
    declared = {name: namespace[name] for name in _KINDS if name in namespace}
    assert declared, f"{notebook.name}: no parameters found"

    line = "globals().update(read_widgets(globals()))"  # the line each notebook adds
    namespace["read_widgets"] = read_widgets
    exec(line, namespace)
    assert {name: namespace[name] for name in declared} == declared

    samples = {str: "s3://fruits-eu/elsewhere", int: "3", float: "0.5", bool: "true"}
    widgets = {name: samples[_KINDS[name]] for name in declared}
    namespace["dbutils"] = FakeDbutils(widgets)
    exec(line, namespace)
    for name in declared:
        assert namespace[name] == coerce(name, widgets[name]), name
        assert type(namespace[name]) is _KINDS[name], name
