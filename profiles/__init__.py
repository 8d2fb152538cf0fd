"""pypto_serving.profiles"""
