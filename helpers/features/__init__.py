"""The feature step, image bytes -> CNN features: the model and weights (``models``), the
settings (``spec``), the runtimes (``runtimes``), the workers' Python (``udf``), the features
dataset (``store``), notebook 02's step (``extract``) and the Spark ML stage
(``transformer``). Import from the modules; this file stays empty so that Spark's Python
daemon imports only what it needs (docs/architecture.md)."""
