"""analysis.convergence — to be filled (see the analysis issue)."""
