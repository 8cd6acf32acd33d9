"""headcode.runtime.evaluation: evaluation and head selection."""
