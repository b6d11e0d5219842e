"""pinlab_tasks."""
