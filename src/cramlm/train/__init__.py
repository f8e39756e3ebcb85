"""Training: the budget clock, schedules, optimizer, checkpoints, the loop and its logs."""
