"""``python -m examples.replicate``: see ``examples.replicate.cli``."""

from examples.replicate.cli import main

main()
