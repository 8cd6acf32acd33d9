"""headcode.runtime.model: model loading and attention plumbing."""
