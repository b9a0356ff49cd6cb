# The Optuna sweeper, `hydra/sweeper=optuna` (optuna_sweeper.py): a plugin package of its own beside the
# launcher (hydra_plugins/nst_launcher/), which Hydra finds by scanning the `hydra_plugins` namespace
# package at start-up. It needs the launcher's contract only (ReadsResults), and runs under any launcher.
