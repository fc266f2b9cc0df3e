"""An evaluation job's answer: each offered model (an earlier job's final model file) on this site's held-out slice.

The shard is the one a training job with the job's flags assigns (the offer's DataAssignment); its held-out part is
what the site's clients evaluate in every training round. Each file is checked against its digest while it downloads,
built only as the site's policy allows (--accept-models, --allow-plugin), and read without unpickling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from fedtl.client.local_state import LocalState
from fedtl.client.shard import Shard, load_shard
from fedtl.common import tensorcodec
from fedtl.common.batches import InputTransform
from fedtl.common.classes import label_map
from fedtl.common.config import DataAssignment, SegmentRef
from fedtl.common.data import Source
from fedtl.common.errors import DataUnavailable
from fedtl.common.evaluation import evaluate
from fedtl.common.inputs import ImageInputs
from fedtl.common.jobs import JobOffer, PersonalHead, SiteEvaluation
from fedtl.common.models import place, rebuild_trained

logger = logging.getLogger("client")
Download = Callable[[SegmentRef], memoryview]


def evaluate_models(offer: JobOffer, source: Source, download: Download, device: torch.device, allowed_plugins: tuple[str, ...],
                    where: str, heads: LocalState | None = None) -> tuple[tuple[SiteEvaluation, ...], tuple[PersonalHead, ...]]:
    """Each offered model on the held-out slice; and, when the offer asks and `heads` is given (the site's policy
    allows sharing), the personal head this site trained on each model's own run."""
    assignment = offer.data or DataAssignment(scheme="none")
    shards: dict[tuple[str, ...], Shard] = {}  # by the class order the model reads labels in
    results, shared = [], []
    for model in offer.models:
        decoded = tensorcodec.decode(download(SegmentRef(model.name, model.sha256, model.total_bytes)))
        if decoded.metadata.get("model") != model.architecture:  # the policy decided on the offer's word: the file must keep it
            raise DataUnavailable(f"{model.name}: the file is a {str(decoded.metadata.get('model'))[:64]!r}, the offer said "
                                  f"{model.architecture!r}; nothing of it was built")
        net, info = rebuild_trained(decoded, f"{model.name}'s final model", allowed_plugins)
        order = info.class_names or tuple(source.classes)
        if order not in shards:  # this site's class folders in another order: mapped onto the model's, as a training job does
            mapping = label_map(source.classes, order, where) if info.class_names else None
            shards[order] = load_shard(source if mapping is None else source.relabelled(mapping, list(order)), assignment)
        place(net, device)
        inputs = ImageInputs.of(shards[order].holdout, InputTransform(info.mean, info.std, info.image_size, augment=False), device)
        result = evaluate(net, inputs)
        logger.info("evaluation: %s (%s) on %d held-out images: accuracy %.2f%%, loss %.4f", model.name, info.model, result.examples,
                    100 * result.accuracy, result.loss)
        results.append(SiteEvaluation(model.name, result.loss, result.accuracy, result.examples))
        if offer.collect_personal and heads is not None and (head := heads.head_for(info.model, info.run_id)) is not None:
            shared.append(PersonalHead(model.name, head))
            logger.info("evaluation: sharing this site's personal head of %s (--share-personal-head)", model.name)
    return tuple(results), tuple(shared)
