"""Command-line tools: one module per command, shared by ``bin/e2m-<name>`` and
``exo2micro <name>``."""
