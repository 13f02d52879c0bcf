"""The Flask app: the moderator's upload page and the JSON API, served by waitress."""
from .app import create_app
from .config import WebConfig, load_predictor
from .api import Reload
from .server import background_server, make_server, reload_on_sighup

__all__ = ["create_app", "WebConfig", "load_predictor", "background_server", "make_server", "reload_on_sighup",
           "Reload"]
