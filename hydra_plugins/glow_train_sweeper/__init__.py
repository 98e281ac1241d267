"""glow-train's Hydra sweeper (``hydra/sweeper=glow``): see :mod:`.glow_sweeper`."""
