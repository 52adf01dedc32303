"""Route modules: thin edges over the services."""
