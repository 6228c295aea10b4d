"""baselines: regularized semilinear inversion (Warren & Dye 2003) with the
regularization strength set by the Bayesian evidence (Suyu et al. 2006).

Imports :mod:`lensinv` only.
"""
