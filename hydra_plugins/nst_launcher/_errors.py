"""The launcher's setting errors, in a module of their own so that every launcher file can raise them
without importing another (nst_launcher.py re-exports them)."""

from hydra.errors import CompactHydraException


class NstLauncherConfigError(CompactHydraException, ValueError):
    """A bad launcher setting. Compact: Hydra prints only the message, one line."""
