class InputError(ValueError):
    """Bad user input: reported as one line (naming the config key or file), exit code 2."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class TrialFailed(RuntimeError):
    """A trial that did not complete, with its one-line error: what the Python API raises, and what a
    search's sweeper gets back for a failed trial (the trial's files say the same)."""
