"""Before CM: wait for IAM's node info (IAM.md "What we decide").

The node's identity (its id, its DMIPS scale) comes from IAM, so CM is not contacted until IAM
has answered: registering with a guessed id would put a node CM does not know in its list. While
IAM is unreachable the agent retries with the same backoff as for CM (statemachine/backoff.py,
capped at ``cmReconnectTimeout``) and says so in the log and in systemd's STATUS=.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Optional

from aos_sm.statemachine.backoff import backoff_delays

from ..config import AgentConfig
from ..errors import AosError
from .client import GrpcIamClient
from .port import IamClient, IamNodeInfo, IamUnavailable

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
LOG_INTERVAL = 60.0


def iam_client(config: AgentConfig) -> GrpcIamClient:
    if config.iam_public_server_url is None:
        raise ValueError("no iamPublicServerURL")
    return GrpcIamClient(
        config.iam_public_server_url, ca_cert=config.ca_cert if config.tls_mode != "plaintext" else None,
        cert_type=config.cert_storage, protected_url=config.iam_protected_server_url,
        reconnect_first_wait=config.reconnect_first_wait, reconnect_cap=config.reconnect_cap)


def wait_for_node_info(client: IamClient, config: AgentConfig, stop: threading.Event,
                       status: Callable[[str], None] = lambda text: None,
                       random_source: Callable[[], float] = random.random,
                       monotonic: Callable[[], float] = time.monotonic) -> Optional[IamNodeInfo]:
    """IAM's node info, retrying until it answers; None when ``stop`` is set first."""
    url = config.iam_public_server_url
    delays = backoff_delays(config.reconnect_first_wait, config.reconnect_cap, random_source)
    attempt = 0
    last_logged: Optional[float] = None
    while not stop.is_set():
        attempt += 1
        try:
            info = client.get_node_info(CALL_TIMEOUT)
        except AosError as err:
            wait = next(delays)
            # IamUnavailable: IAM not up (yet); another AosError: a local problem such as an
            # unreadable caCert. Both are retried; STATUS= always says the latest, the log once
            # a minute (the pace of the gateway's own problem lines).
            line = f"waiting for IAM at {url} before contacting CM: {err} (attempt {attempt}, next in {wait:.1f}s)"
            status(line)
            now = monotonic()
            if last_logged is None or now - last_logged >= LOG_INTERVAL:
                log.log(logging.WARNING if isinstance(err, IamUnavailable) else logging.ERROR, "%s", line)
                last_logged = now
            stop.wait(wait)
            continue
        log.info("IAM at %s: node %s (%s), %d DMIPS, %d MiB RAM", url, info.node_id, info.node_type or "-",
                 info.max_dmips, info.total_ram // (1024 * 1024))
        return info
    return None
