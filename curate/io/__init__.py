"""curate.io"""
