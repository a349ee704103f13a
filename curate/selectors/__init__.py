"""curate.selectors"""
