"""pypto_serving.executor"""
