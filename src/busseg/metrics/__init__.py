"""busseg.metrics"""
