"""pinlab_serve."""
