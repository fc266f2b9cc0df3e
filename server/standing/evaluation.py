"""A cross-site evaluation job: every accepting site evaluates each named training job's final model on its own
held-out slice, giving a matrix of models by sites. With --personal, sites that allow it (--share-personal-head) also
send the head they trained on each model; a second offer then has every site evaluate the others' personal models.

The models are served by digest to the sites with an open offer (DownloadModel, the offer id as session). A shared head
is loaded into the model's own head module (names and shapes must fit, values must be finite) before anyone gets it.
"""

from __future__ import annotations

import dataclasses

import torch

from fedtl.common import tensorcodec, wire
from fedtl.common.errors import FedError
from fedtl.common.jobs import JobAnswer, JobOffer, ModelToEvaluate, SiteEvaluation
from fedtl.common.models import rebuild_trained
from fedtl.server.config import ServerConfig
from fedtl.server.model_state import PreparedSegment
from fedtl.server.registry import Session
from fedtl.server.serving import SegmentGone
from fedtl.server.sinks.console import safe
from fedtl.server.standing.running import AnsweringJob, Log
from fedtl.server.standing.terms import JobSettings

MEASURES = ("accuracy", "loss", "examples")


@dataclasses.dataclass(frozen=True)
class Evaluated:
    """A model the job serves: what the offer says of it, its chunks, and its file (a personal model is built from it)."""

    model: ModelToEvaluate
    segment: PreparedSegment
    blob: bytes


def evaluated(name: str, blob: bytes, chunk_bytes: int) -> Evaluated:
    """A model file, serialised once for every site's download."""
    architecture = tensorcodec.decode(blob).metadata["model"]
    manifest, messages = wire.serialize_blob(blob, chunk_bytes)
    return Evaluated(ModelToEvaluate(name, architecture, manifest.sha256, manifest.total_bytes), PreparedSegment(name, manifest, messages), blob)


def personal_model(final: bytes, head: bytes, site: str) -> bytes:
    """`final` with `site`'s head in its head module; refused unless the head fits it exactly and is finite."""
    decoded = tensorcodec.decode(final)
    net, _ = rebuild_trained(decoded, "the evaluated model")
    tensors = tensorcodec.decode(head).tensors
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
        raise ValueError("it holds values that are not finite")
    net.stages[-1][1].load_state_dict(tensors)  # strict: every name, every shape
    return bytes(tensorcodec.encode(net.module.state_dict(), {**decoded.metadata, "personal_head_of": site}))


class EvaluationJob(AnsweringJob):
    def __init__(self, job_id: str, cfg: ServerConfig, settings: JobSettings, sites: list[Session], pins: dict[str, int], log: Log,
                 models: list[Evaluated]) -> None:
        self.served = {e.model.sha256: e for e in models}
        self.rows = [e.model for e in models]  # the matrix's models, in order: the named jobs', then personal ones
        self.current = tuple(self.rows)  # the models of the open offers
        self.personal_phase = False
        self.scores: dict[str, dict[str, SiteEvaluation]] = {}  # site -> model -> its evaluation
        self.heads: dict[tuple[str, str], bytes] = {}  # (model, site) -> the head it shared
        super().__init__(job_id, cfg, settings, sites, pins, log)

    def models(self) -> tuple[ModelToEvaluate, ...]:
        return self.current

    def terms(self, site: Session) -> JobOffer | None:
        offer = super().terms(site)
        return dataclasses.replace(offer, collect_personal=True) if offer and self.settings.personal and not self.personal_phase else offer

    def segment(self, digest: str) -> PreparedSegment:
        if digest not in self.served:
            raise SegmentGone(f"this evaluation job serves no model {digest[:16]}…")
        return self.served[digest].segment

    def take(self, name: str, answer: JobAnswer) -> str:
        names = [m.name for m in self.current]
        if [e.model for e in answer.evaluations] != names:
            return f"it answered for models {[e.model for e in answer.evaluations][:8]}, not the {len(names)} offered"
        self.scores.setdefault(name, {}).update({e.model: e for e in answer.evaluations})
        self.log(f"site {name}: " + ", ".join(f"{e.model} acc {100 * e.accuracy:.2f}% loss {e.loss:.4f} ({e.examples} held out)"
                                              for e in answer.evaluations))
        if self.settings.personal and not self.personal_phase:
            for head in answer.personal_heads:
                if head.model in names:
                    self.heads[(head.model, name)] = head.tensors
            if answer.personal_heads:
                self.log(f"site {name} shared its personal head(s) of {', '.join(sorted({h.model for h in answer.personal_heads}))}")
        return ""

    def personal_models(self) -> list[Evaluated]:
        """The shared heads as whole models (off the event loop: it builds networks); a head that does not fit is logged."""
        finals = {e.model.name: e.blob for e in self.served.values()}
        built = []
        for (model, site), head in sorted(self.heads.items()):
            try:
                blob = personal_model(finals[model], head, site)
            except (FedError, KeyError, ValueError, RuntimeError) as exc:
                self.log(f"site {site}'s personal head of {model} is not used: {safe(str(exc), 200)}")
                continue
            built.append(evaluated(f"{model}+{site}", blob, self.cfg.chunk_bytes))
        return built

    def start_personal(self, models: list[Evaluated], connected: set[str]) -> None:
        """The second offer: every site that answered the first evaluates the others' personal models."""
        self.personal_phase = True
        self.served.update({e.model.sha256: e for e in models})
        self.current = tuple(e.model for e in models)
        self.rows += list(self.current)
        self.waiting = set(self.scores) & connected
        self.done.clear()
        if not self.waiting:
            self.done.set()

    def summary(self) -> dict:
        """The job's results file: the matrix (models by sites) of accuracy, loss and examples, and who refused why."""
        sites = sorted(self.scores)
        matrix = {field: {m.name: {s: getattr(self.scores[s][m.name], field) for s in sites if m.name in self.scores[s]}
                          for m in self.rows} for field in MEASURES}
        return {"models": [m.name for m in self.rows], "sites": sites, **matrix, "refused": dict(sorted(self.refusals.items()))}

    def table(self) -> str:
        """The accuracy matrix as the job's log shows it."""
        sites = sorted(self.scores)
        return "; ".join(f"{m.name}: " + ", ".join(f"{s} {100 * self.scores[s][m.name].accuracy:.2f}%" for s in sites
                                                   if m.name in self.scores[s]) for m in self.rows)
