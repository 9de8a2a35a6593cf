"""The HTTP side of the dashboard: the WSGI server it runs on, the guard in front of Dash, and the
Flask routes for the theme, thumbnails and overlays."""
