"""busseg.engine"""
