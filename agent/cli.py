"""The ``aos-sm`` command: run, cm-sim, iam-sim, demo, fsm, probe."""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, List, Optional

from .config import AgentConfig, ConfigFileError, load_config
from .errors import AosError, ConfigError

log = logging.getLogger("aos_sm")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _setup_logging(level: str) -> None:
    from .sdnotify import JournalFormatter, stderr_is_journal

    handler = logging.StreamHandler(sys.stderr)
    # Under systemd, journald stamps the time and reads the <N> priority prefix itself.
    handler.setFormatter(JournalFormatter() if stderr_is_journal()
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    # transitions logs every callback at INFO: far too chatty for an agent's journal.
    logging.getLogger("transitions").setLevel(logging.WARNING)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _wait_for(stop: threading.Event) -> None:
    """Wait for ``stop`` while letting signal handlers run.

    The kernel may hand SIGTERM to any thread, often one of gRPC's. Python's handler then only
    sets a flag that the main thread acts on when it next runs bytecode, which a bare
    ``stop.wait()`` never does: the signal was lost and ``systemctl stop`` ended in SIGKILL.
    Waking twice a second bounds that delay."""
    while not stop.wait(0.5):
        pass


def _prepare_working_dir(config: AgentConfig) -> None:
    for key, directory in (("workingDir", config.working_dir), ("nodeConfigFile", config.node_config_file.parent)):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(key, f"cannot create {directory}: {err.strerror or err}") from err


def cmd_run(args: argparse.Namespace) -> int:
    config_path = Path(args.config)
    try:
        return _run_agent(args, config_path)
    except ConfigFileError:
        raise
    except ConfigError as err:
        # What the start refuses about the config (its caCert, its working dir, a node id it
        # leaves to discovery) names the file too: the operator may have several.
        raise ConfigFileError.of(config_path, err) from err


def _run_agent(args: argparse.Namespace, config_path: Path) -> int:
    from .app import build_agent, describe
    from .certs import require_credential_files
    from .cmsim import SimulatedCM, to_json
    from .sdnotify import ServiceNotifications, session_status, take_notify_environment

    systemd = ServiceNotifications(take_notify_environment(), os.getpid())
    # A watchdog timeout ends the agent with SIGABRT: dump every thread's stack to the log first.
    faulthandler.enable(all_threads=True)
    config = load_config(config_path)
    for warning in config.warnings:
        log.warning("%s: %s", args.config, warning)
    if not config.cm_server_url and not args.simulator:
        # A forgotten key must not turn a node into a development setup (issue 16): the
        # simulator, and the plaintext it implies, only on request.
        raise ConfigFileError(config_path, "cmServerURL", "not set: the agent needs its CM's address (host:port); "
                              "`aos-sm run --simulator` runs against a built-in CM simulator instead")
    # IAM keeps the file's TLS settings under --simulator: only the CM side is the simulator's.
    iam_config = config
    if args.simulator:
        config = dataclasses.replace(config, tls_mode="plaintext")
    require_credential_files(iam_config if iam_config.uses_iam else config)
    _prepare_working_dir(config)
    stop = _stop_on_signals()
    simulator: Optional[SimulatedCM] = None
    target = config.cm_server_url or ""  # set: refused above unless --simulator
    if args.simulator:
        simulator = SimulatedCM(
            on_message=lambda session, message: print(to_json(message), flush=True)
        ).start()
        if target:
            log.warning("--simulator: cmServerURL %s ignored", target)
        target = simulator.address
        log.warning("--simulator: using the built-in CM simulator at %s, plaintext (development only)", target)
    iam = None
    # The watchdog pings through the gateway's event pump once there is one; before that (while
    # waiting for IAM) it pings directly, since this thread is only waiting.
    pump: List[Callable[[Callable[[], None]], None]] = []

    def in_loop(call: Callable[[], None]) -> None:
        (pump[0] if pump else (lambda inner: inner()))(call)

    if config.uses_iam:
        from .iam.startup import iam_client, wait_for_node_info

        client = iam_client(iam_config)
        # Ready now: IAM may be away longer than systemd's start timeout, and STATUS= says why
        # the node is not registering.
        systemd.ready(in_loop)
        systemd.status(f"waiting for IAM at {config.iam_public_server_url}")
        node_info = wait_for_node_info(client, iam_config, stop, systemd.status)
        if node_info is None:  # stopped while waiting: CM was never contacted
            systemd.stopping()
            client.close()
            return EXIT_OK
        iam = (client, node_info)
    agent = build_agent(config, target=target, iam=iam)
    for line in describe(agent):
        log.info("%s", line)
    agent.gateway.state_listeners.append(
        lambda state: systemd.status(session_status(state.name, target, agent.gateway.problem)))
    agent.start()
    pump.append(agent.gateway.in_loop)
    if iam is None:
        systemd.ready(in_loop)
    _wait_for(stop)
    systemd.stopping()
    stopped = agent.stop(timeout=4.0)
    if simulator is not None:
        simulator.stop(0)
    return EXIT_OK if stopped else EXIT_FAILURE


def cmd_cm_sim(args: argparse.Namespace) -> int:
    from .cmsim_cli import run_cm_sim

    return run_cm_sim(args, _stop_on_signals, _wait_for)


def cmd_iam_sim(args: argparse.Namespace) -> int:
    from .cmsim import ListenError, check_port_free, parse_listen
    from .console import read_commands
    from .iam.sim import SimulatedIAM, default_node_info

    cert_types = tuple(args.cert_type or ["sm"])
    node_info = default_node_info(args.node_id)
    if args.max_dmips is not None:
        node_info.max_dmips = args.max_dmips
    try:
        for option, address, port in (("--public", args.public, 8090), ("--protected", args.protected, 8089)):
            check_port_free(parse_listen(address, option, port), " (another IAM or iam-sim?)")
        simulator = SimulatedIAM(Path(args.dir), node_info=node_info, public_listen=args.public,
                                 protected_listen=args.protected, cert_types=cert_types).start()
    except (ValueError, ListenError) as err:
        print(f"aos-sm iam-sim: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the CA and certificates could not be written under --dir
        print(f"aos-sm iam-sim: --dir {args.dir}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    stop = _stop_on_signals()
    ca = simulator.ca.cert_path
    cm = simulator.issue_server_cert("cm-server")  # for a CM the agent must trust: cm-sim
    print(f"IAM simulator: public {simulator.public_address}, protected {simulator.protected_address}, "
          f"CA {ca}; node {node_info.node_id}, {node_info.max_dmips} DMIPS", file=sys.stderr, flush=True)
    print(f"a CM for it: aos-sm cm-sim --tls-cert {cm.cert} --tls-key {cm.key} --tls-ca {ca}",
          file=sys.stderr, flush=True)
    print("type 'renew [type]' to renew a certificate, 'quit' to stop", file=sys.stderr, flush=True)

    def command(line: str) -> None:
        words = line.split()
        if words[0] != "renew":
            print("commands: renew [type], quit", file=sys.stderr, flush=True)
            return
        kind = words[1] if len(words) > 1 else cert_types[0]
        if kind not in simulator.certs:
            print(f"no certificate type {kind!r}", file=sys.stderr, flush=True)
            return
        issued = simulator.renew(kind)
        print(f"renewed {kind}: serial {issued.serial:x}", file=sys.stderr, flush=True)

    read_commands(command, stop, name="iamsim-stdin")
    _wait_for(stop)
    simulator.stop(0)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    if args.iam:
        from .iam.demo import run_iam_demo

        return run_iam_demo(timeout=args.timeout, verbose=args.verbose,
                            log_file=Path(args.log_file) if args.log_file else None)
    from .demo import run_demo

    return run_demo(timeout=args.timeout, verbose=args.verbose,
                    log_file=Path(args.log_file) if args.log_file else None)


def cmd_fsm(args: argparse.Namespace) -> int:
    if args.instance:
        from .launcher.lifecycle_diagram import render_dot as instance_dot, render_mermaid as instance_mermaid

        mermaid, dot_source = instance_mermaid(), instance_dot()
    else:
        from aos_sm.statemachine import render_dot, render_mermaid

        mermaid, dot_source = render_mermaid(), render_dot()
    if args.format == "mermaid":
        sys.stdout.write(mermaid)
        return EXIT_OK
    if args.format == "dot":
        sys.stdout.write(dot_source)
        return EXIT_OK
    dot = shutil.which("dot")
    if dot is None:
        print("aos-sm fsm --format svg needs Graphviz's `dot` (apt-get install graphviz)", file=sys.stderr)
        return EXIT_USAGE
    result = subprocess.run([dot, "-Tsvg"], input=dot_source.encode(), capture_output=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr.decode(errors="replace"))
        return EXIT_FAILURE
    sys.stdout.buffer.write(result.stdout)
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    from . import probe_cmd

    return probe_cmd.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aos-sm", description="AosEdge Service Manager agent")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error (default info)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--config", required=True, help="the agent's JSON configuration file")
    run.add_argument("--simulator", action="store_true",
                     help="talk to a built-in CM simulator on 127.0.0.1 instead of cmServerURL, in plaintext "
                          "(development: it prints what the agent sends)")
    run.set_defaults(func=cmd_run)

    sim = commands.add_parser("cm-sim", help="a CM simulator: prints what the SM sends, sends typed commands")
    sim.add_argument("--listen", default="127.0.0.1:8093", help="address to listen on (default 127.0.0.1:8093)")
    sim.add_argument("--tls-cert", help="server certificate (PEM); enables TLS")
    sim.add_argument("--tls-key", help="server key (PEM)")
    sim.add_argument("--tls-ca", help="CA for client certificates (PEM); enables mutual TLS")
    sim.add_argument("--image", metavar="DIR",
                     help="serve this OCI image layout's image (oci-layout, index.json, blobs/sha256; what "
                          "`skopeo copy ... oci:DIR` writes) for `start`; default: the built-in demo image")
    sim.add_argument("--image-ref", metavar="NAME",
                     help="with --image: the image whose org.opencontainers.image.ref.name is NAME "
                          "(default: the first in index.json)")
    sim.set_defaults(func=cmd_cm_sim)

    iam_sim = commands.add_parser("iam-sim", help="a fake IAM: node info, certificates from a test CA, renewals, "
                                                  "instance secrets")
    iam_sim.add_argument("--dir", required=True, help="where its CA and certificates are written")
    iam_sim.add_argument("--public", default="127.0.0.1:8090", help="public server address (default 127.0.0.1:8090)")
    iam_sim.add_argument("--protected", default="127.0.0.1:8089",
                         help="protected server address (default 127.0.0.1:8089)")
    iam_sim.add_argument("--node-id", default="iam-node-1", help="the node id IAM states")
    iam_sim.add_argument("--max-dmips", type=int, help="the node's max DMIPS IAM states")
    iam_sim.add_argument("--cert-type", action="append", default=None,
                         help="certificate types it hands out (repeat; default sm)")
    iam_sim.set_defaults(func=cmd_iam_sim)

    demo = commands.add_parser("demo", help="agent and simulator on loopback, end to end")
    demo.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each step")
    demo.add_argument("--iam", action="store_true",
                      help="IAM mode: identity and certificates from a fake IAM, CM over mTLS, a renewal")
    demo.add_argument("--verbose", action="store_true", help="the agent's log on stderr (default: to a file, "
                                                             "named at the end)")
    demo.add_argument("--log-file", metavar="FILE", help="write the agent's log here (default: a new file in "
                                                         "the temporary directory)")
    demo.set_defaults(func=cmd_demo)

    fsm = commands.add_parser("fsm", help="a state diagram (the session's, or with --instance an instance's), "
                                          "drawn from the table the code runs")
    fsm.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    fsm.add_argument("--instance", action="store_true", help="the instance life cycle instead of the session")
    fsm.set_defaults(func=cmd_fsm)

    probe = commands.add_parser("probe", help="what this node would register: CPUs, DMIPS, RAM, cgroups")
    from . import probe_cmd

    probe_cmd.add_arguments(probe)
    probe.set_defaults(func=cmd_probe)
    return parser


def _disable_grpc_fork_handlers() -> None:
    """The agent forks helpers (OCI runtimes, journalctl) while gRPC threads run. With gRPC's
    fork handlers on, a child can die between fork and exec with "epoll_wait error: Bad file
    descriptor" (grpc/grpc issue 43055; seen here with grpcio 1.80). fork+exec needs no handlers,
    so they are turned off before grpc is first imported, unless the operator set it."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def main(argv: Optional[List[str]] = None) -> int:
    _disable_grpc_fork_handlers()
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"aos-sm: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except AosError as err:
        # Anything else the agent refuses at start (a state it cannot open, a runtime it cannot
        # set up) is one line too, not a traceback; --log-level debug shows where it came from.
        log.debug("%s failed", args.command, exc_info=True)
        print(f"aos-sm: {err}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
