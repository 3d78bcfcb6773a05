"""linflow: parameter sweeps of gradient flow on deep linear networks (Eftekhari, ICML 2020)."""

__version__ = "0.1.0"
