"""data stage of resi-dual."""
