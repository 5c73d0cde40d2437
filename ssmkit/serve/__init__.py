"""Serving: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over local models with continuous batching and
remote OpenAI-compatible backends, routed per request by ssmkit.route, with Prometheus metrics.
"""

from .app import create_app
from .backends import LocalBackend, RemoteBackend
from .command import build_service, serve_command
from .engine import Draining, Engine, EngineEvent, GenerationRequest, Overloaded
from .server import ServerThread, ServeServer
from .service import Service
from .slots import SlotPool

__all__ = ["Draining", "Engine", "EngineEvent", "GenerationRequest", "LocalBackend", "Overloaded",
           "RemoteBackend", "ServeServer", "ServerThread", "Service", "SlotPool", "build_service", "create_app",
           "serve_command"]
