"""
.. include:: ../../examples/README.md
"""
