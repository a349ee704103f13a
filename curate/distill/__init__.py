"""curate.distill"""
