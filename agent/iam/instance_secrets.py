"""Instance secrets from IAM: the launcher's ``InstanceSecrets`` port over the IAM client.

An instance whose item config has ``permissions`` (``{funcServer: {function: access}}``) is
registered with IAM's protected server when it starts and gets the secret IAM answers as
``AOS_SECRET``; it is unregistered when it stops. IAM failing fails that instance's start, with
the reason first (CM keeps 64 characters of ErrorInfo.message).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from aos_sm.proto.common.v2 import common_pb2

from ..errors import AosError, Failed, InvalidArgument
from .port import IamClient

CALL_TIMEOUT = 10.0


def permissions_for_iam(raw: Mapping[str, Any]) -> Dict[str, Dict[str, str]]:
    """The item config's ``permissions`` as RegisterInstance's map; anything but
    ``{server: {function: access}}`` is an ``InvalidArgument`` naming the entry."""
    result: Dict[str, Dict[str, str]] = {}
    for server, functions in raw.items():
        if not isinstance(functions, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in functions.items()):
            raise InvalidArgument(f"item config permissions.{server}: expected {{function: access}} strings")
        result[str(server)] = {str(k): str(v) for k, v in functions.items()}
    return result


class IamInstanceSecrets:
    def __init__(self, client: IamClient, timeout: float = CALL_TIMEOUT) -> None:
        self._client = client
        self._timeout = timeout

    def register(self, instance: common_pb2.InstanceIdent, permissions: Mapping[str, Any]) -> str:
        request = permissions_for_iam(permissions)
        try:
            return self._client.register_instance(instance, request, self._timeout)
        except AosError as err:
            raise Failed(f"IAM refused permissions: {err}") from err

    def unregister(self, instance: common_pb2.InstanceIdent) -> None:
        try:
            self._client.unregister_instance(instance, self._timeout)
        except AosError as err:
            raise Failed(f"IAM did not unregister: {err}") from err
