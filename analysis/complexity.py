"""analysis.complexity — to be filled (see the analysis issue)."""
