"""The baseline for bench/: a bare grpcio SM that registers and echoes, with no agent around it.

Run as a process (start-up and RSS baseline) or imported (round-trip baseline). It sends the same
SMInfo and NodeInstancesStatus the agent sends first, then answers every GetNodeConfigStatus
with one prebuilt NodeConfigStatus: the least work any SM could do for that command.
"""

from __future__ import annotations

import sys
import threading
from typing import Optional

import grpc

from aos_sm.agent.writequeue import WriteQueue
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

METHOD = "/servicemanager.v5.SMService/RegisterSM"


class BareClient:
    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._writes: WriteQueue[sm_pb2.SMOutgoingMessages] = WriteQueue()
        self._reply = sm_pb2.SMOutgoingMessages(
            node_config_status=sm_pb2.NodeConfigStatus(state="absent", error={"aos_code": 0})
        )
        self._thread: Optional[threading.Thread] = None

    def start(self, node_id: str = "bare") -> None:
        self._writes.put(sm_pb2.SMOutgoingMessages(sm_info=sm_pb2.SMInfo(node_id=node_id)))
        self._writes.put(sm_pb2.SMOutgoingMessages(node_instances_status=sm_pb2.NodeInstancesStatus()))
        call = self._channel.stream_stream(
            METHOD,
            request_serializer=sm_pb2.SMOutgoingMessages.SerializeToString,
            response_deserializer=sm_pb2.SMIncomingMessages.FromString,
        )(iter(self._writes))

        def echo() -> None:
            try:
                for message in call:
                    if message.WhichOneof("SMIncomingMessage") == "get_node_config_status":
                        self._writes.put(self._reply)
            except grpc.RpcError:
                pass

        self._thread = threading.Thread(target=echo, daemon=True)
        self._thread.start()
        self._call = call

    def stop(self) -> None:
        self._writes.close()
        self._call.cancel()
        self._channel.close()


if __name__ == "__main__":
    client = BareClient(sys.argv[1])
    client.start()
    sys.stdin.read()  # the benchmark closes stdin to stop us
    client.stop()
