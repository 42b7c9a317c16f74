"""Training: the loop, optimiser and schedule, processes under torchrun, the run folder, pretraining,
fine-tuning and sweeps of both."""
