"""nst: experiments and hyperparameter sweeps for Gatys-style neural style transfer.

From Python: `from nst import stylize, stylize_batch` (nst.api); from the shell: `python -m nst.run` (nst.run).
"""

__version__ = "0.1.0"
__all__ = ["Stylized", "__version__", "stylize", "stylize_batch"]


def __getattr__(name: str):
    # The API is imported when first used, so that `import nst` (which Hydra's plugin discovery and
    # every worker process do) stays light.
    if name in ("stylize", "stylize_batch", "Stylized"):
        from nst import api

        return getattr(api, name)
    raise AttributeError(f"module 'nst' has no attribute {name!r}")
