"""The dashboard served at /ui, and the browser pages of the API (/docs, /redoc); every
asset is served by the service itself."""
