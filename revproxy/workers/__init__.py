"""Worker processes (workers = N): the supervisor, the worker side and what they say to each other."""
