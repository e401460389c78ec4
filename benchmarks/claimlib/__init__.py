"""The claim families of benchmarks/claims.py, one module each (common: what they share)."""
