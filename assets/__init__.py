"""Static files the dashboard serves under ``/assets/`` (CSS, logo), installed as ``xaidash.assets``."""
