"""Fruits! pipeline helpers: tested building blocks called by the notebooks."""

__version__ = "0.1.0"
