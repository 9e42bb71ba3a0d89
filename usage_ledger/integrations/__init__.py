"""Gateway plug-ins. Each module imports its gateway's package: import only the one you run."""
