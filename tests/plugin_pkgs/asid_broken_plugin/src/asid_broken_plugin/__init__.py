"""Broken astro_asid plugins used to check that the host survives them."""
