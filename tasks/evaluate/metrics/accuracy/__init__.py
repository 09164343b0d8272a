"""The `accuracy` evaluate module; a package so that installs ship its script."""
