"""
.. include:: ../concepts.md
"""
