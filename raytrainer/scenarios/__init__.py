"""Scenarios shipped with raytrainer; each subpackage registers itself when imported.

``graph_isomorphism``: pairs of graphs, isomorphic or not, and the GIN + transformer agents of
the neural-interactive-proofs project.
"""
