"""The ``kvi`` command line: one module per verb group (``kvi_engine.cli.main`` builds the parser)."""
