"""The Flask app: the moderator's upload page and the JSON API, served by waitress."""
from typing import TYPE_CHECKING

from emoreact.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it (imported on first use: the CLI reads WebConfig for free)
    "create_app": "app",
    "WebConfig": "config",
    "load_predictor": "config",
    "Reload": "api",
    "background_server": "server",
    "make_server": "server",
    "reload_on_sighup": "server",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .api import Reload
    from .app import create_app
    from .config import WebConfig, load_predictor
    from .server import background_server, make_server, reload_on_sighup
