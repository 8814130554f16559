"""Committed manifests of the named corpora (JSON, written by `flyweight data fetch`)."""
