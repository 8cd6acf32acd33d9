"""headcode.runtime.text: text data: corpora and their splits (a text as the model sees it, ``Tokens``, is ``headcode.compiler.tokens``)."""
