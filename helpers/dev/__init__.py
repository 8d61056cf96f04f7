"""Local stand-ins for clusters, for tests and for users without one: a Spark standalone
cluster and an Apache Livy server on 127.0.0.1 (docs/architecture.md)."""
