"""Training: configs, the jitted and sharded train step, schedules, the trainer loop, checkpoints, logging."""
