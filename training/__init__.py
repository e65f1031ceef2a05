"""Training: CycleGAN networks, data loading, the trainer and its checkpoints."""
