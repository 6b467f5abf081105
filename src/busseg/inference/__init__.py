"""busseg.inference"""
