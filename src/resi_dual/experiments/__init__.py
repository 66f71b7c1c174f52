"""experiments stage of resi-dual."""
