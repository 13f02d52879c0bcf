"""The Flask app: the moderator's upload page and the JSON API, served by waitress."""
from .app import create_app
from .config import WebConfig, load_predictor
from .server import background_server, make_server

__all__ = ["create_app", "WebConfig", "load_predictor", "background_server", "make_server"]
