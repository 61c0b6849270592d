"""Real-node termination lab (short form): see lab.py and README.md."""
