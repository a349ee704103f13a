"""curate.core"""
