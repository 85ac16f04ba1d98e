"""``aos-sm cm-sim``: the CM simulator as a command. Arguments are checked before anything listens:
a bad one is one line on stderr and exit 2. It serves an image for ``start`` (its built-in demo
image, or ``--image DIR``, an OCI layout) and turns typed lines into CM's messages."""

from __future__ import annotations

import argparse
import gzip
import ssl
import sys
import threading
import zlib
from pathlib import Path
from typing import Callable, Dict, Optional

import grpc

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .console import read_commands
from .cmsim import HELP, ListenError, SimSession, SimulatedCM, command_message, defaults_for, parse_listen, to_json
from .demo_image import demo_image, host_architecture, real_service_problem
from .ocilayout import load_oci_layout

EXIT_OK, EXIT_USAGE = 0, 2


def _credentials(args: argparse.Namespace) -> Optional[grpc.ServerCredentials]:
    """Server credentials from --tls-cert/--tls-key/--tls-ca, each file checked first (ssl loads
    them as gRPC will) so that a bad one is a one-line error, not a failed handshake later."""
    if not (args.tls_cert or args.tls_key):
        if args.tls_ca:
            raise ValueError("--tls-ca needs --tls-cert and --tls-key")
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: give both")
    contents: Dict[str, bytes] = {}
    for option, name in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-ca", args.tls_ca)):
        if name:
            try:
                contents[option] = Path(name).read_bytes()
            except OSError as err:
                raise ValueError(f"{option} {name}: cannot read: {err.strerror or err}") from err
            if b"-----BEGIN" not in contents[option]:
                raise ValueError(f"{option} {name}: not a PEM file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(args.tls_cert, args.tls_key)
    except ssl.SSLError as err:
        raise ValueError(f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: not a certificate and its "
                         f"key ({err.reason or err})") from err
    if args.tls_ca:
        try:
            ssl.create_default_context(cafile=args.tls_ca)
        except ssl.SSLError as err:
            raise ValueError(f"--tls-ca {args.tls_ca}: no CA certificate in it ({err.reason or err})") from err
    return grpc.ssl_server_credentials([(contents["--tls-key"], contents["--tls-cert"])],
                                       root_certificates=contents.get("--tls-ca"),
                                       require_client_auth="--tls-ca" in contents)


def run_cm_sim(args: argparse.Namespace, stop_on_signals: Callable[[], threading.Event],
               wait_for: Callable[[threading.Event], None]) -> int:
    """``aos-sm cm-sim``; ``stop_on_signals`` and ``wait_for`` are the CLI's (SIGTERM/SIGINT end it)."""
    def show(session: SimSession, message: sm_pb2.SMOutgoingMessages) -> None:
        print(f"[session {session.number}] {to_json(message)}", flush=True)
        text = _log_text(message)
        if text is not None:
            print(f"[session {session.number}] log text:\n{text}", file=sys.stderr, flush=True)

    try:
        listen = parse_listen(args.listen)
        credentials = _credentials(args)
        if args.image_ref and not args.image:
            raise ValueError("--image-ref needs --image DIR")
        try:
            image = load_oci_layout(Path(args.image), args.image_ref) if args.image else demo_image(host_architecture())
        except ValueError as err:
            raise ValueError(f"--image: {err}") from err
        simulator = SimulatedCM(listen, credentials=credentials, on_message=show)
    except (ValueError, ListenError) as err:  # OciLayoutError is a ValueError
        print(f"aos-sm cm-sim: {err}", file=sys.stderr)
        return EXIT_USAGE
    urls = simulator.serve(image)
    simulator.start()
    stop = stop_on_signals()
    print(f"CM simulator listening on {simulator.address}; commands: {HELP}", file=sys.stderr, flush=True)
    print(f"serving {image.description}: manifest {image.manifest_digest} at {urls[image.manifest_digest]}; "
          "`start ITEM` deploys it", file=sys.stderr, flush=True)
    problem = real_service_problem() if not args.image else None
    if problem is not None:
        print(f"note: this host could not run it itself ({problem}); an SM on a node that can will",
              file=sys.stderr, flush=True)

    def command(line: str) -> None:
        session = simulator.current
        if session is None or session.closed.is_set():
            print("no SM connected", file=sys.stderr, flush=True)
            return
        defaults = defaults_for(session, simulator.image)
        try:
            message = command_message(line, defaults)
        except ValueError as err:
            print(err, file=sys.stderr, flush=True)
            return
        if line.split()[0] == "start" and len(line.split()) == 2:
            print(f"start {line.split()[1]}: {defaults.runtime_note}, image {defaults.manifest_digest}",
                  file=sys.stderr, flush=True)
        session.send(message)

    read_commands(command, stop, name="cmsim-stdin")
    wait_for(stop)
    simulator.stop(0)
    return EXIT_OK


def _log_text(message: sm_pb2.SMOutgoingMessages) -> Optional[str]:
    """The text of a LogData part (its data is a gzip stream), for a person reading cm-sim."""
    if message.WhichOneof("SMOutgoingMessage") != "log":
        return None
    data = message.log.data
    if not data:
        return None
    try:
        return gzip.decompress(data).decode(errors="replace").rstrip("\n")
    except (OSError, EOFError, zlib.error):
        return None
