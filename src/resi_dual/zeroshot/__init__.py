"""zeroshot stage of resi-dual."""
