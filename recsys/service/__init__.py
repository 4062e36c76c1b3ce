"""The HTTP service: the API, the model dirs it reloads, the page."""
