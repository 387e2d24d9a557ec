"""`hoe serve OUT_DIR`: the OpenAI-compatible server (torch-free; needs the `serve` extra, `--ray` the `ray` one)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register(sub) -> None:
    from hoe.runtime.cli import add_backend_args

    p = sub.add_parser("serve", help="serve an exported HoE folder over the OpenAI API (preference per request)",
                       description="OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, "
                                   "/health, /metrics) with continuous batching across preferences. Each request may "
                                   "carry \"preference\": [w1, w2, ...]. Needs: pip install 'hoe[serve]'.")
    p.add_argument("folder", metavar="OUT_DIR", help="exported folder (holds hoe_config.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together at most (default 8)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a row at most; beyond, 429 + Retry-After (default 64)")
    p.add_argument("--model-name", help="the model id clients send (default: the folder's name)")
    ray = p.add_argument_group("Ray Serve scale-out (pip install 'hoe[ray]'; docs/SERVING.md)")
    ray.add_argument("--ray", action="store_true", help="serve through Ray Serve: one replica per device")
    ray.add_argument("--replicas", type=int, help="replicas (default: one per GPU, else 1)")
    ray.add_argument("--max-replicas", type=int, help="autoscale between --replicas and this many")
    ray.add_argument("--target-ongoing", type=int, default=None,
                     help="autoscaling: ongoing requests per replica to aim for (default: --max-batch)")
    ray.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    add_backend_args(p)
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from hoe.core.errors import ConfigError

    from .config import EngineConfig, ServeConfig

    engine = EngineConfig(max_batch=args.max_batch, max_queue=args.max_queue)
    config = ServeConfig(host=args.host, port=args.port, model_name=args.model_name, engine=engine)
    try:
        if args.ray:
            from .ray_app import RayConfig, run_ray

            return run_ray(args.folder, config, RayConfig.from_args(args), _load_kwargs(args))
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as e:
        extra = "ray" if args.ray else "serve"
        raise ConfigError(f"hoe serve needs the '{extra}' extra: pip install 'hoe[{extra}]' (missing module "
                          f"{e.name!r})") from e
    from hoe.runtime.cli import load_model

    from .server import build_app, serve_forever

    model = load_model(args)
    app, _ = build_app(model, config)
    serve_forever(app, config)
    return 0


def _load_kwargs(args) -> dict:
    """hoe.runtime.load keyword arguments of the backend options (for each Ray replica)."""
    providers = [s.strip() for s in args.providers.split(",") if s.strip()] if args.providers else None
    kw = {"backend": args.backend, "providers": providers, "threads": args.threads,
          "spinning": False if args.no_spinning else None, "verify": not args.no_verify, "base": args.base,
          "hoe": args.hoe}
    return {k: v for k, v in kw.items() if v is not None}
