"""ssmkit: state space sequence models (S4, Mamba, Mamba-2) and their hybrids with attention."""

__version__ = "0.1.0"

_LAZY = {"load_pretrained": "ssmkit.io", "save_pretrained": "ssmkit.io"}


def __getattr__(name):
    """ssmkit.load_pretrained / ssmkit.save_pretrained, imported on first use so `import ssmkit` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssmkit' has no attribute {name!r}")
