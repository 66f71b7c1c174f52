"""spectral stage of resi-dual."""
