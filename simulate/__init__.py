"""pypto_serving.simulate: `pypto simulate --execute`, the launching side and its worker."""
