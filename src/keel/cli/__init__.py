"""The ``keel`` command line: one typer module per command group."""
