"""
.. include:: testing.md
"""
