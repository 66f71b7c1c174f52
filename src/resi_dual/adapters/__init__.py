"""adapters stage of resi-dual."""
