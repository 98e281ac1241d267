"""glow-train's Hydra sweeper (`hydra/sweeper=glow`): see `.glow_sweeper`."""
