"""Recipes: the loops that wire components into a run (training, the demo, sweeps). Nothing below imports them."""
