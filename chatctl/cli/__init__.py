"""The chatctl command line: one module per family of commands, joined in ``main``."""
