"""What the worker process and its calls record about themselves: Prometheus metrics and the call ids on every log
line. The worker serves them (worker/metrics_endpoint.py, its JSON log set-up); calls/ and postcall/ record."""
