"""The chaos suite: faults injected under a load of simulated TrainingJobs (make chaos)."""
