"""
.. include:: ../replication.md
"""
