"""curate.executors"""
