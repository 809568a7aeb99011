"""Training: configs, the jitted and sharded train step, schedules, the loop, checkpoints, logs."""
