# The Optuna sweeper, `hydra/sweeper=optuna` (optuna_sweeper.py): a plugin package of its own beside the
# launcher (hydra_plugins/nst_launcher/), which Hydra finds by scanning the `hydra_plugins` namespace
# package at start-up. It takes two small pieces of the launcher package (the contract's ReadsResults,
# _processes.pid_alive) and hands its trials to whichever launcher is configured.
