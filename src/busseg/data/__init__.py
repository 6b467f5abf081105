"""busseg.data"""
