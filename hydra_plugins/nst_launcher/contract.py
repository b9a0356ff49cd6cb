"""What an app offers the nst launcher, and what the launcher hands it: import this in an app.

    from hydra_plugins.nst_launcher.contract import BatchApp, BatchJob

    class MyApp(BatchApp):
        def run_batch(self, jobs: list[BatchJob]) -> list: ...   # one value per job
        def batch_key(self, cfg): ...                            # optional: who may share a batch
        def batch_size(self, cfgs): ...                          # optional: max_batch=auto
        def lost_batch(self, jobs, error, since): ...            # optional: a batch lost elsewhere

    app = hydra.main(version_base="1.3", config_path="conf", config_name="config")(MyApp())

A Sweeper that reads its jobs' results (a search) says so by also deriving from ReadsResults; an app
asks `reads_results()` to know whether a failed job must reach the sweeper as a failure.
Each piece is documented where it is defined, in _contract.py.

Why two files: Hydra's plugin scan executes every public module under hydra_plugins again at start-up,
after the app has imported it, which would make a second BatchApp class that the app's subclass does
not derive from. The scan skips `_` modules, so the classes live in _contract.py and keep one identity.
"""

from ._contract import BatchApp, BatchJob, CurrentJob, ReadsResults, batch_app, reads_results

__all__ = ["BatchApp", "BatchJob", "CurrentJob", "ReadsResults", "batch_app", "reads_results"]
