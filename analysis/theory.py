"""analysis.theory — to be filled (see the analysis issue)."""
