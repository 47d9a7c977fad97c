"""phiforge: the Phi-4 training recipe (arXiv 2412.08905) as software."""

__version__ = "0.1.0"
