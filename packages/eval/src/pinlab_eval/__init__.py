"""pinlab_eval."""
