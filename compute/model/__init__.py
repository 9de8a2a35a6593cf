"""Models: the architectures, the checkpoint file, loading a run's model, and the training loop."""
