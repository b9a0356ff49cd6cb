class InputError(ValueError):
    """Bad user input: reported as one line (naming the config key or file), exit code 2."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")
