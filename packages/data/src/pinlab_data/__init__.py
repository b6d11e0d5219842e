"""pinlab_data."""
