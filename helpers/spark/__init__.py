"""Spark plumbing: the session, its settings and versions, the JVM calls, jars and the
class archive. Modules here import downward only: versions and settings are leaves,
session sits on top (docs/architecture.md)."""
