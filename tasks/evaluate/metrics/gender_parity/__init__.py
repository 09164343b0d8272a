"""The `gender_parity` evaluate module; a package so that installs ship its script."""
