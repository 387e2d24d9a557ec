"""Scale-out on Ray Serve: the same Engine in every replica, one replica per device.

    hoe serve OUT_DIR --ray --replicas 2                      # local Ray, HTTP on --host/--port
    serve run hoe.serve.ray_app:build folder=OUT_DIR replicas=2 max_batch=8    # Ray's own CLI

Each replica loads the exported folder, runs its own continuous-batching Engine (`max_batch` rows) and
answers the same routes as `hoe serve` (Api.dispatch); Ray's HTTP proxy spreads requests over the replicas.
Batching across requests happens inside each replica's engine; Ray adds the replica count
(fixed, or autoscaled between `replicas` and `max_replicas` aiming at `target_ongoing` requests per
replica) and `max_ongoing_requests` per replica (its own back-pressure, beyond which Ray queues).
On a GPU node each replica asks Ray for one GPU (`num_gpus=1`); on CPUs for `num_cpus` cores (= ORT threads).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hoe.core.config import JsonConfig
from hoe.core.errors import ConfigError

from .config import EngineConfig, ServeConfig

log = logging.getLogger(__name__)


@dataclass
class RayConfig(JsonConfig):
    """How the deployment is replicated and placed."""

    replicas: int | None = None  # fixed replica count (autoscaling: the minimum); None -> one per GPU, else 1
    max_replicas: int | None = None  # set -> autoscale between `replicas` and this
    target_ongoing: int | None = None  # autoscaling target of ongoing requests per replica; None -> max_batch
    max_ongoing_requests: int | None = None  # per replica, Ray's back-pressure; None -> max_batch + max_queue
    num_cpus: float = 1.0  # CPU cores per replica (also its ORT threads when `threads` is not given)
    num_gpus: float | None = None  # GPUs per replica; None -> 1 when the cluster has GPUs, else 0
    address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None -> start a local one

    @classmethod
    def from_args(cls, args) -> RayConfig:
        return cls(replicas=args.replicas, max_replicas=args.max_replicas, target_ongoing=args.target_ongoing,
                   address=args.ray_address, num_cpus=float(args.threads or 1))

    def __post_init__(self) -> None:
        for name in ("replicas", "max_replicas", "target_ongoing", "max_ongoing_requests"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"RayConfig.{name} must be an integer >= 1 or None, got {v!r}")
        if self.max_replicas is not None and self.max_replicas < (self.replicas or 1):
            raise ConfigError(f"RayConfig.max_replicas ({self.max_replicas}) must be >= replicas ({self.replicas})")


class Replica:
    """The body of the Ray Serve deployment: one model, one Engine, the HTTP routes of `hoe serve`."""

    def __init__(self, folder: str, serve_config: dict, load: dict) -> None:
        import hoe.runtime as hr
        from ray import serve

        from .app import Api
        from .engine import Engine
        from .metrics import Metrics
        from .protocol import ServedModel
        from .server import model_name

        config = ServeConfig.from_dict(serve_config)
        self.model = hr.load(folder, **load)
        self.engine = Engine(self.model, config.engine, Metrics()).start()
        replica = serve.get_replica_context().replica_id.unique_id
        self.api = Api(self.engine, ServedModel(self.model, model_name(self.model, config)), {"replica": replica})
        log.info("replica %s serves %s (pid %d)", replica, folder, os.getpid())

    async def __call__(self, request):
        return await self.api.dispatch(request)


def application(folder: str | Path, config: ServeConfig, ray_config: RayConfig, load: dict | None = None):
    """The Ray Serve application (bind it with serve.run)."""
    import ray
    from ray import serve

    gpus = ray_config.num_gpus
    if gpus is None:
        gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    replicas = ray_config.replicas or (int(ray.cluster_resources().get("GPU", 0)) if gpus else 0) or 1
    load = dict(load or {})
    load.setdefault("threads", max(1, int(ray_config.num_cpus)))
    if gpus:
        load.setdefault("providers", ["cuda", "cpu"])
    opts = {"ray_actor_options": {"num_cpus": ray_config.num_cpus, "num_gpus": gpus},
            "max_ongoing_requests": ray_config.max_ongoing_requests
            or config.engine.max_batch + config.engine.max_queue}
    if ray_config.max_replicas:
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": ray_config.max_replicas,
                                      "target_ongoing_requests": ray_config.target_ongoing or config.engine.max_batch}
    else:
        opts["num_replicas"] = replicas
    log.info("Ray Serve deployment 'hoe': %s", opts)
    deployment = serve.deployment(Replica, name="hoe").options(**opts)
    return deployment.bind(str(Path(folder).resolve()), config.to_dict(), load)


def start(folder, config: ServeConfig, ray_config: RayConfig, load: dict | None = None, blocking: bool = False):
    """Start (or join) Ray, its HTTP proxy on config.host:config.port, and the application."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=ray_config.address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    app = application(folder, config, ray_config, load)
    return serve.run(app, name="hoe", route_prefix="/", blocking=blocking)


def run_ray(folder, config: ServeConfig, ray_config: RayConfig, load: dict | None = None) -> int:
    """`hoe serve --ray`: blocks until Ctrl-C. `load`: hoe.runtime.load keyword arguments for each replica."""
    log.info("Ray Serve on http://%s:%d/v1 (OpenAI API)", config.host, config.port)
    start(folder, config, ray_config, load, blocking=True)
    return 0


def build(args: dict):
    """`serve run hoe.serve.ray_app:build folder=OUT_DIR [replicas=N max_replicas=M max_batch=B max_queue=Q
    threads=T num_gpus=G model_name=NAME]`: Ray's application-builder entry point."""
    args = dict(args)
    folder = args.pop("folder", None)
    if not folder:
        raise ConfigError("serve run hoe.serve.ray_app:build needs folder=OUT_DIR (an exported HoE folder)")
    ints = {k: int(args.pop(k)) for k in ("replicas", "max_replicas", "target_ongoing", "max_batch", "max_queue",
                                          "threads") if k in args}
    gpus = float(args.pop("num_gpus")) if "num_gpus" in args else None
    name = args.pop("model_name", None)
    if args:
        raise ConfigError(f"serve run hoe.serve.ray_app:build: unknown arguments {sorted(args)}; expected folder, "
                          "replicas, max_replicas, target_ongoing, max_batch, max_queue, threads, num_gpus, model_name")
    engine = EngineConfig(**{k: ints[k] for k in ("max_batch", "max_queue") if k in ints})
    ray_config = RayConfig(replicas=ints.get("replicas"), max_replicas=ints.get("max_replicas"),
                           target_ongoing=ints.get("target_ongoing"), num_gpus=gpus,
                           num_cpus=float(ints.get("threads", 1)))
    return application(folder, ServeConfig(model_name=name, engine=engine), ray_config)
