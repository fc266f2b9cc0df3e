"""Prepare a dataset once into a folder that the server and every client then read (read-only).

    python -m scripts.prepare_data --data SPEC --out DIR

leaves DIR/dataset, which `--data DIR/dataset` opens on both sides, and DIR/dataset.json saying what it
was made from. SPEC is what `--data` takes elsewhere:
    synthetic[:N]            the generated patterns, written as PNG files in ImageFolder layout (fast)
    /path/archive.tar.gz     an archive of an ImageFolder tree with train/ and test/ (e.g. cifar10-jpeg.tar.gz),
                             or of cifar-10-batches-py (the official cifar-10-python.tar.gz)
    /path/folder             such a tree (or a folder holding cifar-10-batches-py), copied
    cifar10                  downloaded with torchvision (needs internet)
Running it again with the same SPEC does nothing, so a compose `data` service can run on every `up`;
another SPEC replaces the dataset. The split is whole: the server assigns each client its shard, and a
client decodes only the images of its own shard.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from fedtl.common.data import Source, open_split
from fedtl.common.errors import FedError
from fedtl.common.logs import configure_logging

logger = logging.getLogger("prepare_data")


SYNTHETIC_MTIME = 946_684_800  # 2000-01-01: generated files carry a fixed time, so preparing them again changes nothing a run sees


def describe(spec: str) -> dict[str, object]:
    """What identifies the input: the spec, and for a local file or folder its size and modification time."""
    path = Path(spec).expanduser()
    if path.exists():
        stat = path.stat()
        return {"source": spec, "size": stat.st_size, "mtime": stat.st_mtime}
    return {"source": spec}


def prepare(spec: str, out: Path) -> Path:
    """Make OUT/dataset from SPEC unless it is already there; return its path."""
    target, marker = out / "dataset", out / "dataset.json"
    wanted = describe(spec)
    if target.is_dir() and marker.is_file() and json.loads(marker.read_text()).get("input") == wanted:
        logger.info("%s already holds %s; nothing to do", target, spec)
        return target
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    try:
        built = _build(spec, staging)
        counts = {split: _summary(open_split(str(built), split, staging / "cache")) for split in ("train", "test")}
        marker.unlink(missing_ok=True)
        if target.exists():
            shutil.rmtree(target)
        built.rename(target)
        marker.write_text(json.dumps({"input": wanted, "splits": counts}, indent=1) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("prepared %s from %s: %s", target, spec,
                "; ".join(f"{split} {c['images']} images in {c['classes']} classes" for split, c in counts.items()))
    return target


def _build(spec: str, staging: Path) -> Path:
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _write_image_folder(spec, staging / "built")
    if spec == "cifar10":
        root = staging / "built"
        open_split(f"cifar10:{root}", "test", staging / "cache")  # downloads into root/cifar-10-batches-py
        (root / "cifar-10-python.tar.gz").unlink(missing_ok=True)
        return root
    path = Path(spec).expanduser()
    if path.is_file():
        path = _extract(path, staging / "extracted")
    elif not path.is_dir():
        raise FedError(f"--data {spec}: no such file or folder (inside a container, mount it first; see docs/deployment.md)")
    root = _split_root(path)
    if root.is_relative_to(staging):  # unpacked from an archive: use it where it is
        return root
    built = staging / "built"
    if (root / "cifar-10-batches-py").is_dir():
        shutil.copytree(root / "cifar-10-batches-py", built / "cifar-10-batches-py")
    else:
        shutil.copytree(root, built, ignore=shutil.ignore_patterns(".*"))
    return built


def _extract(archive: Path, dest: Path) -> Path:
    """Unpack a .tar(.gz) safely: plain files and folders inside dest only (tarfile's 'data' filter where the
    Python has it; the same rules by hand on Python < 3.11.4, e.g. Debian 12's 3.11.2)."""
    if not archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise FedError(f"--data {archive}: a file must be a .tar.gz/.tgz/.tar archive of an image folder")
    logger.info("extracting %s", archive)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(dest, filter="data")
            except tarfile.TarError as exc:
                raise FedError(f"{archive}: refusing to unpack it: {exc}") from None
            return dest
        root = dest.resolve()
        members = []
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()) or not (root / member.name).resolve().is_relative_to(root):
                raise FedError(f"{archive}: refusing member {member.name!r}: only plain files and folders below the archive's root")
            member.mode = 0o755 if member.isdir() else 0o644
            members.append(member)
        tar.extractall(dest, members=members)  # noqa: S202 - members checked above
    return dest


def _split_root(path: Path) -> Path:
    """The folder (PATH or one below it) that holds train/ and test/, or cifar-10-batches-py."""
    for candidate in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if ((candidate / "train").is_dir() and (candidate / "test").is_dir()) or (candidate / "cifar-10-batches-py").is_dir():
            return candidate
    raise FedError(f"{path}: found no train/ and test/ class folders (nor cifar-10-batches-py) in it or one level below")


def _write_image_folder(spec: str, root: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        images = open_split(spec, split, root).load()
        for index, (pixels, label) in enumerate(zip(images.images, images.labels.tolist())):
            folder = root / split / images.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{index:06d}.png"
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path, compress_level=1)
            os.utime(path, (SYNTHETIC_MTIME, SYNTHETIC_MTIME))  # the same images, the same identity (it reads sizes and times)
    return root


def _summary(source: Source) -> dict[str, int]:
    return {"images": len(source), "classes": len(source.classes)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.prepare_data", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic[:N], cifar10, an archive or a folder (see below)")
    p.add_argument("--out", type=Path, required=True, help="folder to hold dataset/ (in compose: the data volume)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    configure_logging("INFO", prefix="data ")
    try:
        prepare(a.data, a.out)
    except FedError as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
