"""curate.metrics"""
