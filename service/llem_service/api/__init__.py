"""HTTP routes: one router per resource, mounted under /v1 (health at the root)."""
