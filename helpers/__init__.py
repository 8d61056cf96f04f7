"""Fruits! pipeline helpers: tested building blocks called by the notebooks."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository checkout this package was installed from (``pip install -e .``).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
