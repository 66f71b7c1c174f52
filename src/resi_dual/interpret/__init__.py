"""interpret stage of resi-dual."""
