"""pypto_serving.core"""
