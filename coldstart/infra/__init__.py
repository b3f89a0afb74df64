"""Infrastructure the stages share: checkpoints, processes, runtime, stage start and bookkeeping."""
