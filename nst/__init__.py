"""nst: experiments and hyperparameter sweeps for Gatys-style neural style transfer."""

__version__ = "0.1.0"
