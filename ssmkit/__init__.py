"""ssmkit: state space sequence models (S4, Mamba, Mamba-2) and their hybrids with attention."""

__version__ = "0.1.0"
