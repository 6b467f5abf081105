"""busseg.viz"""
