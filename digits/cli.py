"""The ``digits`` command: ``up`` (the embedded stack), ``init``, ``sweep``, ``secret-key``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import nats.errors
import nats.js.errors

from digits import bus, natsauth
from digits.config import ConfigError, Settings
from digits.natsserver import NatsServer, NatsServerError, free_port, port_free
from digits.supervisor import Supervisor, child_env, python_module

log = logging.getLogger("digits")

SERVICES = (("gateway", "gateway"), ("ingest", "ingest_service"), ("train", "train_service"))
SERVICES += (("view", "view_service"),)


def _secret_key(data_dir: Path) -> str:
    """The data dir's secret key, made on first use (0600)."""
    from digits.secrets import SecretBox

    path = data_dir / "secret.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(SecretBox.generate_key())
    return path.read_text().strip()


def up(args: argparse.Namespace) -> int:
    """Start nats-server and the four services; stop all of them on Ctrl-C or SIGTERM."""
    data_dir = Path(args.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    nats_port = args.nats_port or (4222 if port_free(4222) else free_port())
    users = natsauth.passwords(data_dir)  # the bus is locked: each service signs in as itself
    _adopt_anonymous_store(data_dir / "jetstream")
    server = NatsServer(
        data_dir / "jetstream",
        port=nats_port,
        log_file=logs / "nats-server.log",
        accounts=natsauth.ACCOUNTS_CONF,
        env=natsauth.server_env(users),
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
    except NatsServerError as exc:
        print(f"digits up: {exc} (see {logs / 'nats-server.log'})", file=sys.stderr)
        return 1
    natsauth.record_url(data_dir, server.url)
    supervisor = Supervisor()
    try:
        env = dict(os.environ)
        env.setdefault("DIGITS_DATA_ROOTS", str(Path.home()))
        if args.demo:  # the demo set lives in the data dir: let datasets read it
            env["DIGITS_DATA_ROOTS"] += os.pathsep + str(data_dir / "demo")
        settings = Settings.from_env(
            env,
            nats_urls=(server.url,),
            nats_creds=None,
            nats_user="admin",
            nats_password=users["admin"],
            data_dir=str(data_dir),
            store_url=env.get("DIGITS_STORE_URL") or (data_dir / "store").as_uri(),
            secret_key=env.get("DIGITS_SECRET_KEY") or _secret_key(data_dir),
        )
        asyncio.run(_init(settings))
        for name, module in SERVICES:
            extra = settings.to_env()
            extra.update(DIGITS_NATS_USER=name, DIGITS_NATS_PASSWORD=users[name])
            if name == "gateway":
                extra["DIGITS_PORT"] = str(args.port)
                extra["DIGITS_GATEWAY_HOST"] = args.host
            else:
                extra["DIGITS_HEALTH_PORT"] = "0"
            supervisor.add(name, python_module(module), child_env(extra), logs / f"{name}.log")
        print(f"DIGITS is up: http://{args.host}:{args.port}/", flush=True)
        print(f"  NATS {server.url}, data in {data_dir}, logs in {logs}", flush=True)
        print("  NATS signs in users only: `digits nats-user integrator` prints a URL", flush=True)
        if not env.get("DIGITS_ADMIN_PASSWORD"):
            where = data_dir / "admin-password.txt"
            print(f"  user admin: the first start writes its password to {where}", flush=True)
        if args.demo:
            job_id = asyncio.run(_demo(settings, data_dir))
            print(f"  demo dataset: job {job_id} (http://{args.host}:{args.port}/)", flush=True)
        while not stopping.wait(0.5):
            supervisor.poll()
            if server.proc is not None and server.proc.poll() is not None:
                log.warning("nats-server exited; restarting it")
                server.start()
    except ConfigError as exc:
        print(f"digits up: configuration error: {exc}", file=sys.stderr)
        return 2
    finally:
        print("stopping...", flush=True)
        supervisor.stop()
        server.stop()
    print("stopped", flush=True)
    return 0


def _adopt_anonymous_store(store_dir: Path) -> None:
    """Move what an unlocked server stored (account $G) to the DIGITS account, once."""
    old, new = store_dir / "jetstream" / "$G", store_dir / "jetstream" / "DIGITS"
    if old.is_dir() and not new.exists():
        log.warning("moving the JetStream store of the unlocked bus (%s) to account DIGITS", old)
        old.rename(new)


def nats_user(args: argparse.Namespace) -> int:
    """Print a URL that signs in to `digits up`'s bus as one of its users."""
    print(natsauth.user_url(Path(args.data_dir).expanduser().resolve(), args.user))
    return 0


async def _init(settings: Settings) -> None:
    nc = await bus.connect(settings, "digits-init", max_reconnect_attempts=5)
    try:
        await bus.ensure_all(nc.jetstream(), settings.replicas)
    finally:
        await nc.close()


DEMO_COMMAND_ID = "demo-dataset-synthetic-v1"
DEMO_MODEL_ID = "demo-model-lenet-v1"
DEMO_MODEL_FORM = {
    "standard_networks": "lenet",
    "train_epochs": 10,
    "batch_size": 32,
    "solver_type": "ADAM",
    "learning_rate": 0.002,
    "lr_policy": "fixed",
    "use_mean": "image",
    "random_seed": 1,
}


async def _demo(settings: Settings, data_dir: Path) -> str:
    """Generate the offline synthetic set (once) and create its dataset (once); the job id."""
    from digits import events
    from digits.download_data import synthetic

    folder = data_dir / "demo" / "synthetic"
    if not (folder / "train").is_dir():
        await asyncio.to_thread(synthetic.generate, folder, classes=10, per_class=100, size=28)
    command = events.DatasetCreate(
        event_id=DEMO_COMMAND_ID,
        name="Synthetic digits (demo)",
        group="demo",
        form={
            "method": "folder",
            "folder_train": str(folder / "train"),
            "folder_pct_val": 25,
            "resize_width": 28,
            "resize_height": 28,
            "resize_channels": 1,
            "encoding": "png",
        },
    )
    nc = await bus.connect(settings, "digits-demo", max_reconnect_attempts=5)
    try:
        js = nc.jetstream()
        await bus.publish_event(js, command)
        idem = await js.key_value("digits-idem")
        for _ in range(150):  # the ingest service claims the command when it takes it
            try:
                job_id = (await idem.get(f"dataset-create.{DEMO_COMMAND_ID}")).value.decode()
                break
            except nats.js.errors.KeyNotFoundError:
                await asyncio.sleep(0.2)
        else:
            return "(queued)"
        # A LeNet on it: it waits for the dataset, then trains, so the graphs move at once.
        model = events.ModelCreate(
            event_id=DEMO_MODEL_ID,
            name="LeNet (demo)",
            group="demo",
            dataset_id=job_id,
            form=DEMO_MODEL_FORM,
        )
        await bus.publish_event(js, model)
        return job_id
    finally:
        await nc.close()


def dataset_inspect(args: argparse.Namespace) -> int:
    """Print a dataset's counts, shapes and label histogram."""
    from digits.dataset import inspect

    try:
        print(inspect(args.url))
    except (OSError, ValueError, KeyError) as exc:
        print(f"digits dataset inspect: {exc}", file=sys.stderr)
        return 1
    return 0


def init(args: argparse.Namespace) -> int:
    """Create streams, KV buckets and consumers on the configured NATS (idempotent)."""
    env = dict(os.environ)
    if args.nats:
        env["DIGITS_NATS_URL"] = args.nats
    if args.replicas:
        env["DIGITS_REPLICAS"] = str(args.replicas)
    settings = Settings.from_env(env)
    where = ", ".join(settings.nats_urls)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            asyncio.run(_init(settings))
            break
        except (OSError, TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            # A cluster that is still electing its leaders answers "unavailable" for a while.
            reason = getattr(exc, "description", None) or repr(exc)
            if time.monotonic() >= deadline:
                print(f"digits init: {where}: {reason}", file=sys.stderr)
                return 1
            log.info("NATS at %s not ready (%s); retrying", where, reason)
            time.sleep(1.0)
    print(f"streams, buckets and consumers ready on {where} (replicas {settings.replicas})")
    return 0


def serve(args: argparse.Namespace) -> int:
    """Run one service with only some of its consumers, or for one work item (KEDA ScaledJob)."""
    import importlib

    from digits import subjects

    only = {c for c in (args.consumers or "").split(",") if c} | ({args.once} - {None})
    unknown = sorted(only - set(subjects.CONSUMERS))
    if unknown:
        known = ", ".join(sorted(subjects.CONSUMERS))
        print(f"digits serve: unknown consumers {unknown}; known: {known}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{args.module}.__main__")  # NAME and setup
    settings = Settings.from_env()
    logging.getLogger().setLevel(settings.log_level)
    asyncio.run(_serve(module, settings, only, args.once, args.idle_exit))
    return 0


async def _serve(
    module: object, settings: Settings, only: set[str], once: str | None, idle_s: float
) -> None:
    from digits import subjects
    from digits.service import ServiceRuntime

    class Role(ServiceRuntime):
        took = False

        def add_worker(self, spec, handler, **kw):  # type: ignore[no-untyped-def]
            if only and spec.durable not in only | {subjects.CONSUMER_DLQ_FORWARDER}:
                return None  # another role's consumer: another process runs it
            if spec.durable == once:
                handler = self._one(handler)
                kw.pop("factory", None)  # a plain worker: a prefetching one would take a second
            return super().add_worker(spec, handler, **kw)

        def _one(self, handler: bus.Handler) -> bus.Handler:
            async def one(msg: object) -> None:
                self.took = True
                try:
                    await handler(msg)  # type: ignore[arg-type]
                finally:
                    self.stop.set()  # the worker acks (or naks) it, then stops fetching

            return one

    rt = Role(module.NAME, settings)  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rt.stop.set)
    await rt.start()
    await module.setup(rt)  # type: ignore[attr-defined]
    await rt.mark_ready()

    async def idle_exit() -> None:
        try:
            await asyncio.wait_for(rt.stop.wait(), idle_s)
        except TimeoutError:
            if not rt.took:
                log.info("%s: no work for %.0fs; exiting", rt.name, idle_s)
                rt.stop.set()

    if once and idle_s > 0:
        rt.background(idle_exit())
    await rt.wait()


def sweep(args: argparse.Namespace) -> int:
    """Remove uploads older than the TTL that no job refers to; print what went, as JSON."""
    import json

    from digits.jobs import JobError
    from digits.store import StoreError

    settings = Settings.from_env()
    ttl = settings.upload_ttl_s if args.ttl is None else args.ttl
    if ttl <= 0:
        print(
            f"digits sweep: --ttl {args.ttl!r} must be a positive number of seconds",
            file=sys.stderr,
        )
        return 2
    try:
        report = asyncio.run(_sweep(settings, ttl, args.dry_run))
    except (OSError, TimeoutError, JobError, StoreError, nats.errors.Error) as exc:
        reason = getattr(exc, "description", None) or str(exc) or repr(exc)
        print(f"digits sweep: {reason}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 1 if report["failed"] else 0


async def _sweep(settings: Settings, ttl: float, dry_run: bool) -> dict[str, object]:
    from digits import subjects, uploads
    from digits.jobs import JobStore
    from digits.store import store_from_settings

    nc = await bus.connect(settings, "digits-sweep", max_reconnect_attempts=5)
    try:
        js = nc.jetstream()
        jobs = JobStore(js, await js.key_value(subjects.KV_JOBS))
        async with store_from_settings(settings) as store:
            report = await uploads.sweep(store, jobs, ttl, dry_run=dry_run)
        return report.to_dict()
    finally:
        await nc.close()


def secret_key(args: argparse.Namespace) -> int:
    """Print a new key for DIGITS_SECRET_KEY."""
    from digits.secrets import SecretBox

    print(SecretBox.generate_key())
    return 0


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="digits", description="DIGITS on a message bus")
    sub = p.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run the embedded stack on this machine")
    p_up.add_argument("--data-dir", default=os.environ.get("DIGITS_DATA_DIR", "~/.digits"))
    p_up.add_argument("--port", type=int, default=5000, help="gateway port (default 5000)")
    p_up.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    p_up.add_argument("--nats-port", type=int, default=0, help="default 4222, or a free port")
    p_up.add_argument("--demo", action="store_true", help="also create the demo dataset and model")
    p_up.set_defaults(func=up)
    p_init = sub.add_parser("init", help="create streams, KV buckets and consumers")
    p_init.add_argument("--nats", help="server URLs, comma-separated (default DIGITS_NATS_URL)")
    p_init.add_argument("--replicas", type=int, help="stream replicas (default DIGITS_REPLICAS)")
    p_init.add_argument(
        "--wait", type=float, default=0.0, help="keep retrying this many seconds (default 0)"
    )
    p_init.set_defaults(func=init)
    p_serve = sub.add_parser("serve", help="run a service with some of its consumers")
    p_serve.add_argument("module", help="ingest_service, train_service or view_service")
    p_serve.add_argument("--consumers", help="comma-separated durable names to run (default all)")
    p_serve.add_argument("--once", metavar="CONSUMER", help="exit after one message of this one")
    p_serve.add_argument(
        "--idle-exit", type=float, default=0.0, help="with --once: exit if none comes in S seconds"
    )
    p_serve.set_defaults(func=serve)
    p_ds = sub.add_parser("dataset", help="dataset tools")
    ds_sub = p_ds.add_subparsers(dest="dataset_command", required=True)
    p_inspect = ds_sub.add_parser("inspect", help="counts, shapes and label histogram")
    p_inspect.add_argument("url", help="file:///.../datasets/<job>, s3://... or a local path")
    p_inspect.set_defaults(func=dataset_inspect)
    p_user = sub.add_parser("nats-user", help="print a URL that signs in to `digits up`'s NATS")
    p_user.add_argument("user", help="integrator (outside systems), admin (operators), ...")
    p_user.add_argument("--data-dir", default=os.environ.get("DIGITS_DATA_DIR", "~/.digits"))
    p_user.set_defaults(func=nats_user)
    p_sweep = sub.add_parser("sweep", help="remove old uploads that no job refers to (JSON out)")
    p_sweep.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    p_sweep.add_argument("--ttl", type=float, help="seconds (default DIGITS_UPLOAD_TTL_S)")
    p_sweep.set_defaults(func=sweep)
    p_key = sub.add_parser("secret-key", help="print a new DIGITS_SECRET_KEY")
    p_key.set_defaults(func=secret_key)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``digits`` command."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s digits %(levelname)s %(message)s")
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"digits: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
