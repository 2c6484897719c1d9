"""Training code for the bids_qa model families (one module per family) and the clean-data sources
(:mod:`bids_qa.training.data`) they draw from."""
