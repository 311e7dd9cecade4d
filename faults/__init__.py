"""Fault injection for the pipeline's stages (`make faults`): see faults/suite.py."""
