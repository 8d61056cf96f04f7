"""Databricks job parameters: widgets override the notebook's ``parameters`` cell.

On Databricks a job's parameters (and a notebook's widgets) arrive through
``dbutils.widgets``, not through papermill. One line after the ``parameters`` cell lets the
same notebook run unchanged everywhere::

    globals().update(read_widgets(globals()))

Off Databricks (papermill, Jupyter, EMR) there is no ``dbutils`` and the line changes
nothing. On Databricks each parameter the cell declares is replaced by the widget of the
same name when one is set (a job's ``base_parameters``, or the notebook's widget bar), and
converted to the parameter's type with :func:`helpers.config.coerce`; parameters without a
widget get one, holding their default, so an interactive user sees and can change them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from helpers.config import PARAMETERS, coerce

log = logging.getLogger(__name__)

_NAMES = tuple(p.name for p in PARAMETERS)


def _widget(dbutils: Any, name: str) -> str | None:
    """The value of widget ``name``, or ``None`` if the notebook has no such widget."""
    try:
        return dbutils.widgets.get(name)
    except Exception as exc:  # Databricks raises its own InputWidgetNotDefined (via Py4J)
        log.debug("no widget %s: %s", name, exc)
        return None


def read_widgets(values: Mapping[str, Any], dbutils: Any | None = None) -> dict[str, Any]:
    """The notebook's parameters, each overridden by its Databricks widget when there is one.

    ``values`` is the notebook's namespace (``globals()``): the parameters are the names of
    :data:`helpers.config.PARAMETERS` it defines, and ``dbutils`` is taken from it unless
    given. Without ``dbutils`` the parameters come back unchanged. A widget value that does
    not fit its parameter's type raises, naming the parameter.
    """
    params = {name: values[name] for name in _NAMES if name in values}
    dbutils = dbutils if dbutils is not None else values.get("dbutils")
    if dbutils is None:
        return params
    for name, default in params.items():
        raw = _widget(dbutils, name)
        if raw is None:
            dbutils.widgets.text(name, _as_text(default))
            continue
        params[name] = coerce(name, raw)
        if params[name] != default:
            log.info("parameter %s = %r (from the widget)", name, params[name])
    return params


def _as_text(value: Any) -> str:
    """A parameter's default as a widget shows it (booleans as true/false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
