"""Tamper evidence for the event log: a hash chain of checkpoints and its verification."""
