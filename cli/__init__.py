"""pypto_serving.cli"""
