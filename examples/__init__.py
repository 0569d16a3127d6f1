"""Example tools and clients for the approval gateway."""
