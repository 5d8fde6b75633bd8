"""Measurement: a worker subprocess per artifact (worker.py), its launcher (harness.py) and the
statistics over its samples (stats.py). worker.py imports only numpy and the runtime it measures."""
