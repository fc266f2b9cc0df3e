"""The server's command line: every flag, its default and its help. server/config.py checks the values."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from fedtl.common import codecs, config_file
from fedtl.common.chunks import DEFAULT_CHUNK_BYTES
from fedtl.common.cli import HelpFormatter
from fedtl.common.codecs import CHOICES
from fedtl.common.config import TrainConfig
from fedtl.common.logs import FORMATS, LEVELS
from fedtl.common.partition import SCHEMES
from fedtl.server.observe import settings as observe
from fedtl.server.publishing import DOWNLOAD_CODECS
from fedtl.server.strategies import OPTIMIZERS, RULES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server", description="Coordinate a federated fine-tuning run.",
                                formatter_class=HelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("run")
    g.add_argument("--address", default="127.0.0.1:50051", help="host:port to listen on (port 0: any free port); beyond loopback it needs TLS or --allow-insecure")
    g.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="checkpoints and round logs go here")
    g.add_argument("--output", type=Path, default=None, help="final model file (default: RUN_DIR/final_model.safetensors)")
    g.add_argument("--resume", choices=("auto", "never"), default="auto", help="auto: continue from RUN_DIR's checkpoint when there is one")
    g.add_argument("--keep-round-models", action="store_true", help="also keep the global model of every round in RUN_DIR/models/")
    g.add_argument("--device", default="auto", help="evaluation device: auto, cpu, cuda or cuda:N")
    g.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS, help="how much the server logs")
    g.add_argument("--log-format", default="text", choices=FORMATS, help="text lines, or json: one object a line (ts, level, event, fields)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet18", help="resnet18, resnet50, mobilenet_v3_small, efficientnet_lite0, tiny_cnn")
    g.add_argument("--weights", default="imagenet", help="imagenet, none, or a local weights file (.pth or .safetensors)")
    g.add_argument("--train", dest="train_policy", default="all", help="what clients fine-tune: all, head, or blocks:K")
    g.add_argument("--fedbn", action="store_true", help="keep BatchNorm layers local to each client (FedBN)")
    g.add_argument("--image-size", type=int, default=0, help="input size in pixels (0: 32 for 32 px data, else the model's)")
    g.add_argument("--num-classes", type=int, default=0, help="0: the number of classes in the test split")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="cifar10", help="cifar10[:ROOT], synthetic[:N], an ImageFolder dir with train/ and test/, or a .tar.gz of one")
    g.add_argument("--data-cache", type=Path, default=Path.home() / ".cache" / "fedtl", help="downloads and extracted archives")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="frozen-backbone features kept by digest (the test split's; a simulation's clients'), so the next run of "
                        "the same configuration reads them instead of computing them (default: DATA_CACHE/features; '' : none)")
    g.add_argument("--test-per-class", type=int, default=0, help="evaluate on the first N test images per class (0: all)")
    g.add_argument("--train-per-class", type=int, default=0, help="clients train on the first N images per class (0: all)")
    g.add_argument("--num-partitions", type=int, default=0, help="shards of the training split (0: as many as clients connected when round 1 starts)")
    g.add_argument("--partition-scheme", default="iid", help=f"how the training split is sharded: {', '.join(SCHEMES)}")
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skew)")
    g.add_argument("--classes-per-client", type=int, default=2, help="label-skew: classes each client sees")
    g.add_argument("--holdout-fraction", type=float, default=0.0, help="share of each shard kept for federated evaluation")
    g = p.add_argument_group("rounds")
    g.add_argument("--rounds", type=int, default=3, help="rounds to run")
    g.add_argument("--round-config", default=None, metavar="MODULE:FUNCTION",
                   help="your function (round, recipe) -> settings to change that round, e.g. {'lr': 0.01}: a schedule (docs/api.md)")
    g.add_argument("--min-clients", type=int, default=2, help="connected clients needed before a round starts")
    g.add_argument("--clients-per-round", type=int, default=0, help="how many clients to select each round (0: all connected)")
    g.add_argument("--fraction", type=float, default=0.0, help="select this share of the connected clients instead (0 < F <= 1)")
    g.add_argument("--min-fit-clients", type=int, default=0, help="answers needed to aggregate a round (0: same as --min-clients)")
    g.add_argument("--over-select", type=float, default=0.0, help="select this much more (e.g. 0.25) and close at the target count")
    g.add_argument("--round-timeout", type=float, default=600.0, help="seconds a round waits for updates")
    g.add_argument("--round-retries", type=int, default=2, help="re-run a round that got too few answers this many times, then stop")
    g.add_argument("--wait-timeout", type=float, default=0.0, help="give up if --min-clients have not connected after this many seconds (0: wait)")
    g.add_argument("--join-grace", type=float, default=2.0, help="before round 1, wait until no client joined for this long")
    g.add_argument("--finish-grace", type=float, default=10.0, help="after the last round, wait this long for clients to hang up")
    g = p.add_argument_group("training recipe (sent to clients)")
    for f in fields(TrainConfig):
        if f.name == "seed":
            continue  # the run's --seed (group "run") is the one clients get
        flag, help_text = TrainConfig.flag(f.name), f.metadata["help"]
        if f.type in ("bool", bool):
            g.add_argument(flag, action="store_true", default=f.default, help=help_text)
        else:
            g.add_argument(flag, type=type(f.default), default=f.default, help=help_text)
    g.add_argument("--seed", type=int, default=0, help="seeds selection, partitions, the new head and clients' shuffling")
    g = p.add_argument_group("aggregation")
    g.add_argument("--metric-aggregation", default="", metavar="package.module:function",
                   help="your own function over every answering client's (examples, metrics) -> a dict of numbers, logged in each "
                        "round record as client_metrics (docs/api.md)")
    g.add_argument("--aggregation", default="mean", help=f"how updates combine: {', '.join(RULES)} (all but mean are robust to a "
                   "minority of dishonest clients: docs/robustness.md)")
    g.add_argument("--server-optimizer", default="sgd", help=f"how the aggregate moves the model: {', '.join(OPTIMIZERS)} "
                   "(sgd: FedAvg/FedSGD, avgm: FedAvgM, adam/yogi/adagrad: FedAdam/FedYogi/FedAdagrad)")
    g.add_argument("--server-lr", type=float, default=0.0,
                   help="server learning rate (0: " + ", ".join(f"{k} {v.default_lr:g}" for k, v in OPTIMIZERS.items()) + "; fedsgd with sgd: --lr)")
    g.add_argument("--server-momentum", type=float, default=0.9, help="avgm: server momentum")
    g.add_argument("--server-beta1", type=float, default=None, help="adam/yogi/adagrad: first-moment decay (default 0.9)")
    g.add_argument("--server-beta2", type=float, default=None, help="adam/yogi: second-moment decay (default 0.99)")
    g.add_argument("--server-tau", type=float, default=None, help="adam/yogi/adagrad: adaptivity (default 1e-3)")
    g.add_argument("--server-bias-correction", action="store_true",
                   help="adam: scale the step by sqrt(1-beta2^(t+1))/(1-beta1^(t+1)) as Flower's FedAdam does")
    g.add_argument("--trim-fraction", type=float, default=0.1, help="trimmed-mean: share of the values dropped at each end")
    g.add_argument("--byzantine", type=int, default=1, help="krum, bulyan: how many clients of a round may be dishonest")
    g.add_argument("--krum-select", type=int, default=1, help="krum: average the best m updates (1: Krum; more: Multi-Krum)")
    g.add_argument("--weighted-rule", action="store_true", help="robust rules weigh updates by their (capped) example counts")
    g.add_argument("--root-data", default=None, help="fltrust: the coordinator's small clean root set (its train split), e.g. a folder")
    g.add_argument("--root-per-class", type=int, default=10, help="fltrust: root images per class")
    g.add_argument("--max-aggregate-memory", type=float, default=8192.0,
                   help="MB that order-based rules may keep for one round's updates (RAM, then a file in RUN_DIR)")
    g.add_argument("--max-update-norm", type=float, default=0.0, help="clip each update's L2 norm to this, parameters and buffers each (0: off)")
    g.add_argument("--norm-quantile", type=float, default=0.0,
                   help="clip to this quantile (0 < Q < 1) of earlier rounds' update norms instead (adaptive; 0: off)")
    g.add_argument("--weighting", default="capped", choices=("examples", "uniform", "capped"),
                   help="how much an update counts: the examples claimed, the same for all, or claims capped at the client's shard size")
    g.add_argument("--weight-cap", type=float, default=0.0, help="capped: at most this many examples per client (0: its shard's size)")
    g.add_argument("--max-examples", type=int, default=10_000_000, help="refuse updates claiming more examples than this")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate on the test split every N rounds (0: never)")
    g.add_argument("--client-eval-every", type=int, default=0, help="federated evaluation on clients' held-out slices every N rounds")
    g.add_argument("--eval-batch-size", type=int, default=0, help="0: picked for the image size (64 at 64 px, 256 at 32 px)")
    g = p.add_argument_group("secure aggregation (docs/secure-aggregation.md)")
    g.add_argument("--secure-aggregation", action="store_true", help="SecAgg+: the coordinator learns only the sum of each round's updates")
    g.add_argument("--secagg-neighbours", type=int, default=0, help="clients each client shares its secrets with (0: all; SecAgg+ uses ~log n)")
    g.add_argument("--secagg-threshold", type=int, default=0,
                   help="shares that rebuild a secret: more than half the neighbours (0: 2k/3 + 1, which tolerates a third dropping out)")
    g.add_argument("--secagg-bits", type=int, default=24, help="fixed-point bits per coordinate (stochastic rounding)")
    g.add_argument("--secagg-clip", type=float, default=0.0, help="L2 bound clients clip their updates to before masking (0: --max-update-norm)")
    g.add_argument("--secagg-max-weight", type=int, default=0,
                   help="the most examples one update may count for (0: --weight-cap, or 65536; --weighting uniform: 1)")
    g = p.add_argument_group("client-level differential privacy: DP-FedAvg (docs/privacy.md; record-level DP-SGD: --dp-clip above)")
    g.add_argument("--client-dp-clip", type=float, default=0.0, help="clip each client's whole update to this L2 norm and add "
                   "Gaussian noise to the mean (0: off; with --client-dp-quantile: the adaptive clip's start)")
    g.add_argument("--client-dp-noise", type=float, default=0.0, help="noise multiplier z: noise std / clip on the sum (0: calibrated "
                   "to --target-epsilon before round 1)")
    g.add_argument("--target-epsilon", type=float, default=0.0, help="client-level: the ε the whole run may reach (calibrates z)")
    g.add_argument("--max-epsilon", type=float, default=0.0, help="client-level: stop the run cleanly before a round that would "
                   "take the federation's ε past this (0: no limit)")
    g.add_argument("--client-dp-quantile", type=float, default=0.0, help="adaptive clipping (Andrew et al. 2021): the share of "
                   "clients whose update should fit the clip, e.g. 0.5 (0: fixed clip)")
    g.add_argument("--client-dp-clip-lr", type=float, default=0.2, help="adaptive clipping: how fast the clip follows the quantile")
    g.add_argument("--client-dp-count-noise", type=float, default=0.0,
                   help="adaptive clipping: std of the noise on the count of unclipped updates (0: clients per round / 20)")
    g.add_argument("--client-dp-weighting", choices=("uniform", "examples"), default="uniform",
                   help="uniform: every client counts the same (noise z*clip/k); examples: weigh by (capped) examples, noise "
                   "z*clip*(the largest weight share)")
    g = p.add_argument_group("transport and security")
    g.add_argument("--compression", default="none", help="none or gzip (for slow links)")
    g.add_argument("--upload-codec", default="raw", type=_codec, metavar="|".join(CHOICES),
                   help="how clients encode updates: raw (exact), fp16/bf16 (2 bytes a value), int8 (1 byte a value, per-channel "
                   "scales, unbiased stochastic rounding), topk:F (the fraction F largest entries, with client-side error "
                   "feedback), topk+int8:F (those entries in 8 bits)")
    g.add_argument("--download-codec", default="raw", choices=DOWNLOAD_CODECS,
                   help="how the global model goes to clients: raw (exact), fp16/bf16/int8 (the coordinator then evaluates and "
                   "checkpoints that decoded model), delta (int8 steps from the version a client holds, checked by digest)")
    g.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES, help=f"bytes per streamed chunk (<= {DEFAULT_CHUNK_BYTES})")
    g.add_argument("--max-concurrent-uploads", type=int, default=4, help="updates decoded at once; bounds server memory")
    g.add_argument("--max-concurrent-downloads", type=int, default=8, help="model streams sent at once (others queue); bounds server memory")
    g.add_argument("--max-clients", type=int, default=1000, help="connected clients at most (0: no limit); more wait and retry")
    g.add_argument("--join-rate", type=float, default=20.0, help="joins a second from one address (bursts of 5 s worth; 0: no limit)")
    g.add_argument("--join-rate-total", type=float, default=200.0, help="joins a second in all (0: no limit)")
    g.add_argument("--stall-timeout", type=float, default=30.0, help="a transfer that shows no progress for this many seconds is cut off")
    g.add_argument("--min-transfer-rate", type=float, default=32768.0,
                   help="bytes a second a transfer must average once --stall-timeout has passed (0: any rate)")
    g.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM); enables TLS")
    g.add_argument("--tls-key", type=Path, default=None, help="the certificate's private key (PEM)")
    g.add_argument("--tls-client-ca", type=Path, default=None, help="require client certificates signed by this CA (mutual TLS)")
    g.add_argument("--token", default=None, help="shared token every client must send (or FEDTL_TOKEN)")
    g.add_argument("--tokens-file", type=Path, default=None, help="per-client tokens: lines of 'client-name token'")
    g.add_argument("--allow-insecure", action="store_true", help="listen without TLS on a non-loopback address")
    observe.add_flags(p)
    config_file.add_flags(p)
    return p


def _codec(name: str) -> str:
    """The codec's canonical name (topk:0.010 -> topk:0.01: what clients are told and records say)."""
    try:
        return codecs.get(name).name
    except Exception as exc:  # ConfigError: argparse prints it as the flag's error
        raise argparse.ArgumentTypeError(str(exc)) from None
