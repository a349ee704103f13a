"""curate.synth"""
