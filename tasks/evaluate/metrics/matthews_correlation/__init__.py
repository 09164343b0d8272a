"""The `matthews_correlation` evaluate module; a package so that installs ship its script."""
