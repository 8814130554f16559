"""Models built from flyweight operators."""
