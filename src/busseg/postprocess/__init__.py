"""busseg.postprocess"""
