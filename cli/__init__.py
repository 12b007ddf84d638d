"""The `voice-worker` command line: the composition root that may import both the worker and the door."""
