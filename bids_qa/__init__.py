"""bids_qa: label-free artifact quality assessment for structural MRI (a BIDS-App)."""

__version__ = "0.1.0"
