"""Example astro_asid plugin package."""
