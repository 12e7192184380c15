"""Run Hub data pipeline."""
