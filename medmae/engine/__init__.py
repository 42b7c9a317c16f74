"""Training loops, optimisation and checkpoints."""
