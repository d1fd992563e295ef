"""The task runtime: the scheduler, the task server that forks tasks, and resume."""
