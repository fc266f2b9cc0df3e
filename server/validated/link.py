"""The leader's calls to the helper (the only gRPC of the coordinator's validated aggregation): bind, open, sum.

Blocking calls, made on the aggregation thread when a round closes. A helper that does not answer fails the round
(AggregationError: it is retried, as a round with too few answers is); nothing a helper says is trusted beyond its
shape: openings and sums of the wrong size are refused.
"""

from __future__ import annotations

import grpc
import numpy as np

from fedtl.common.validated_sum.proof import Shape
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc
from fedtl.server.strategies.stacked import AggregationError
from fedtl.server.validated import ValidatedSettings

CALL_TIMEOUT = 60.0


class HelperLink:
    def __init__(self, settings: ValidatedSettings) -> None:
        self.address = settings.helper
        if settings.ca_cert is not None:
            channel = grpc.secure_channel(settings.helper, grpc.ssl_channel_credentials(settings.ca_cert.read_bytes()))
        else:
            channel = grpc.insecure_channel(settings.helper)
        self.stub = pb_grpc.HelperStub(channel)
        self.metadata = [("authorization", f"Bearer {settings.token}")] if settings.token else []

    def bind(self, round_number: int, shape: Shape, clients: list[str]) -> dict[str, bytes]:
        request = pb.HelperBind(round=round_number, shape=pb.ValidatedShape(coordinates=shape.coordinates, bits=shape.bits,
                                                                            bound=shape.bound), clients=clients)
        return dict(self._call(self.stub.Bind, request).bindings)

    def open(self, round_number: int, challenge_seed: bytes, clients: list[str], size: int) -> dict[str, np.ndarray]:
        openings = self._call(self.stub.Open, pb.HelperOpen(round=round_number, challenge_seed=challenge_seed, clients=clients)).openings
        return {name: _values(data, size, f"the helper's opening for {name[:64]}") for name, data in openings.items() if name in clients}

    def sum(self, round_number: int, clients: list[str], weights: list[int], coordinates: int) -> np.ndarray:
        answer = self._call(self.stub.Sum, pb.HelperSum(round=round_number, clients=clients, weights=weights))
        return _values(answer.values, coordinates, "the helper's sum")

    def _call(self, method, request):  # type: ignore[no-untyped-def]
        try:
            return method(request, metadata=self.metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            raise AggregationError(f"the helper at {self.address} did not answer ({exc.code().name}: {exc.details()}); check that it "
                                   "runs, and --helper, --helper-ca-cert and --helper-token") from None


def _values(data: bytes, size: int, what: str) -> np.ndarray:
    values = np.frombuffer(data, dtype="<u8").astype(np.uint64)
    if values.shape != (size,) or int(values.max(initial=0)) >= (1 << 61) - 1:
        raise AggregationError(f"{what} is not {size} field elements")
    return values
