"""The thin HTTP edge."""
