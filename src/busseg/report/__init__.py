"""busseg.report"""
