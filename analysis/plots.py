"""analysis.plots — to be filled (see the analysis issue)."""
