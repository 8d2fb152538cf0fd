"""pypto_serving.router"""
