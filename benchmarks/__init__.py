"""Benchmarks of the playground's variants: ``python -m benchmarks run|report|compare`` (see benchmarks/README.md)."""
