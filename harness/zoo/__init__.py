"""Reference models and data sets the project defines itself (no downloads at run time)."""
