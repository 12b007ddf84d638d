"""The web-call door: the HTTP API that mints browser call tokens (Feather and RevDesk contracts).

It depends on contract/, catalog/ and records/ (and, for the call page only, on pipelines/ provider registry);
never on the worker process. `door.app.create_app` builds it, `door.server.serve` runs it."""
