"""What the service shows in a browser, with every asset served by the service itself."""
