"""report stage of resi-dual."""
