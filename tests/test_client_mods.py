"""Client mods compose around the local round in one declared order, and each does its one job: the owner's limits refuse
a task first, the update goes out encoded, the audit keeps the very bytes sent, error feedback keeps its residual only
once the server took the update. No network: the coordinator is a recording stand-in."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedtl.client.app import build_mods
from fedtl.client.config import parse_args
from fedtl.client.error_feedback import ErrorFeedbackMod
from fedtl.client.local_round import LocalResult
from fedtl.client.mods import Upload, send_through
from fedtl.client.mods.audit import AuditMod
from fedtl.client.mods.encode import EncodeMod
from fedtl.client.mods.pacing import LinkPacingMod
from fedtl.client.mods.policy import SitePolicyMod
from fedtl.client.mods.privacy import PrivacyBudgetMod
from fedtl.client.mods.secure import SecureAggregationMod
from fedtl.client.mods.validated import ValidatedMod
from fedtl.client.privacy import PrivacyBudget
from fedtl.common import codecs
from fedtl.common.codecs import UpdateSource
from fedtl.common.config import DataAssignment, TrainConfig, TrainTask, UpdateHeader, UpdateKind
from fedtl.common.errors import PrivacyRefused, UpdateRejected
from fedtl.common.metrics import ClientMetrics


class RecordingIo:
    def __init__(self, refuse: bool = False) -> None:
        self.sent: list[tuple[UpdateHeader, bytes]] = []
        self.refuse = refuse

    def upload(self, header: UpdateHeader, blob: bytes | bytearray | memoryview) -> str:
        if self.refuse:
            raise UpdateRejected("bad_update", "refused for the test")
        self.sent.append((header, bytes(blob)))
        return "accepted"

    def secagg(self, message: object) -> str:
        raise AssertionError("no secure aggregation in these rounds")


def _upload(io: RecordingIo, encoding: str = "raw", round_number: int = 1) -> Upload:
    update = {"w": torch.linspace(-1, 1, 400).reshape(20, 20), "b": torch.arange(20, dtype=torch.float32) / 10}
    task = TrainTask(round_number, (), "d" * 64, TrainConfig(), DataAssignment(), update_encoding=encoding)
    result = LocalResult(12, UpdateKind.WEIGHT_DELTA, UpdateSource.of(update), ClientMetrics(train_loss=0.5, steps=3))
    return Upload(task, "session", "run", result, io)


def _send(mods, upload: Upload) -> str | None:  # type: ignore[no-untyped-def]
    return send_through(mods, upload, lambda u: u.io.upload(u.header(), u.blob))


def test_the_mods_are_built_in_their_declared_order(tmp_path: Path) -> None:
    cfg = parse_args(["--workdir", str(tmp_path / "w"), "--audit-dir", str(tmp_path / "audit"), "--simulate-link", "10/50"], env={})
    order = [type(mod) for mod in build_mods(cfg, PrivacyBudget(tmp_path / "w", 0.0))]
    assert order == [SitePolicyMod, PrivacyBudgetMod, LinkPacingMod, ValidatedMod, SecureAggregationMod, ErrorFeedbackMod, EncodeMod, AuditMod]
    plain = parse_args(["--workdir", str(tmp_path / "w")], env={})
    assert [type(m) for m in build_mods(plain, PrivacyBudget(tmp_path / "w", 0.0))] == [
        SitePolicyMod, PrivacyBudgetMod, ValidatedMod, SecureAggregationMod, ErrorFeedbackMod, EncodeMod]


def test_the_owners_limit_refuses_a_task_before_anything_else(tmp_path: Path) -> None:
    mod = PrivacyBudgetMod(PrivacyBudget(tmp_path, max_epsilon=3.0))
    with pytest.raises(PrivacyRefused, match="only under record-level DP"):
        mod.admit(_upload(RecordingIo()).task)
    mod.admit(replace(_upload(RecordingIo()).task, config=TrainConfig(dp_clip=1.0, dp_epsilon=2.0)))  # private: admitted


def test_the_audit_keeps_exactly_the_bytes_that_were_sent(tmp_path: Path) -> None:
    io = RecordingIo()
    mods = [PrivacyBudgetMod(PrivacyBudget(tmp_path, 0.0)), SecureAggregationMod("c"), ErrorFeedbackMod(tmp_path), EncodeMod(),
            AuditMod(tmp_path / "audit", "c")]
    assert _send(mods, _upload(io, "int8")) == "accepted"
    [(header, blob)] = io.sent
    assert (tmp_path / "audit" / "c-round0001.safetensors").read_bytes() == blob
    info = json.loads((tmp_path / "audit" / "c-round0001.json").read_text())
    assert info["sha256"] == header.sha256 and info["num_examples"] == 12 and info["metrics"] == {"train_loss": 0.5, "steps": 3.0}
    decoded = codecs.get("int8").decode(blob, {"w": (torch.float32, (20, 20)), "b": (torch.float32, (20,))})
    assert torch.allclose(decoded["w"], torch.linspace(-1, 1, 400).reshape(20, 20), atol=0.01)


def test_error_feedback_keeps_its_residual_only_once_the_server_took_the_update(tmp_path: Path) -> None:
    residual = tmp_path / "error_feedback.safetensors"
    mods = [ErrorFeedbackMod(tmp_path), EncodeMod()]
    with pytest.raises(UpdateRejected):
        _send(mods, _upload(RecordingIo(refuse=True), "topk:0.05"))
    assert not residual.exists()  # nothing of that round was aggregated: nothing left out either
    io = RecordingIo()
    _send(mods, _upload(io, "topk:0.05"))
    assert residual.exists() and len(io.sent) == 1
    _send([EncodeMod()], _upload(io, "raw", 2))  # an unbiased codec passes through error feedback untouched
    assert io.sent[-1][0].encoding == "raw"
