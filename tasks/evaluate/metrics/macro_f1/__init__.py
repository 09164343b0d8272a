"""The `macro_f1` evaluate module; a package so that installs ship its script."""
