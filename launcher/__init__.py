"""pypto_serving.launcher"""
