"""Allow ``python -m bids_qa``."""

from bids_qa.cli import run

run()
