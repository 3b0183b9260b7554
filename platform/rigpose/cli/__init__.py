"""The `rigpose` command line (Typer): one module per command group, gathered in `rigpose.cli.main`."""
