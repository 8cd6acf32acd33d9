"""headcode.runtime.text: text data: tokens, corpora and their splits."""
