"""Training infrastructure: the learner, optimizer, checkpoints, metrics and progress, graceful
preemption. Import the modules themselves: the package imports nothing, so a light reader (the
report) does not load Orbax."""
