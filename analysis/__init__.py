"""Analysis of linflow results (xarray in, xarray or figures out). Filled by the analysis issue."""
