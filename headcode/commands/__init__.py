"""One module per ``headcode`` subcommand (see ``headcode.cli``)."""
