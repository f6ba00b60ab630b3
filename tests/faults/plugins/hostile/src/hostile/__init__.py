"""Hostile tasks: each records the pids of the processes it leaves behind."""
