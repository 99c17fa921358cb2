"""Scale-out indexing on Ray Data into a Chroma server.

The same chunks, ids and stale-chunk handling as the single-process indexer.
"""
