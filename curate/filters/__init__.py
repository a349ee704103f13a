"""curate.filters"""
