"""pypto_serving.simulate: `pypto simulate --execute` and `--calibration` (launching side and worker)."""
