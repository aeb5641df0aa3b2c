"""Kinetics-600 as a TFDS builder `kinetics600` (array_record), prepared from local clips.

Why a custom preparation: the dataset is ~500k clips that each need a video decode, so the
build must use every core and survive interruptions, and a few percent of real clips are
broken. tfds' own parallel path needs Apache Beam, so this builder writes the array_record
shards itself:

1. `kinetics_source.locate_source` lists the clips (standard `<split>/<class>/*.mp4`
   layout or flat files + official CSVs); nothing is downloaded, and missing files fail
   within seconds with a message naming the expected paths.
2. The clips of each split are cut into fixed work items ("parts", `clips_per_shard` clips
   each). A process pool decodes them (`video_decode.decode_clip`: PyAV, centre crop,
   Lanczos to `size`, native frame rate unless `fps` is set) and writes each part as one
   array_record file plus a JSON record of what it holds, both atomically (temporary name,
   then rename), under `<data_dir>/kinetics600_build/<config>/<version>/`. A restarted
   build finds the finished parts there and only does the missing ones. `plan.json` pins
   the clip list, so a restart against a changed source fails instead of mixing the two.
3. When every part exists, the non-empty parts become the tfds shards of each split
   (hard links, no copy), the split infos and metadata are written, and tfds renames the
   dataset directory into place; the work directory is removed afterwards.

Bad clips never stop a build and never go unnoticed: clips that fail to decode, are
truncated or are shorter than `min_frames` (and CSV rows without a file) are skipped; the
dataset directory gets `build_summary.json` (counts per split and reason) and
`skipped_clips.tsv` (every skipped clip with its reason), and the totals are logged.

Features per clip: `video` uint8 [T, size, size, 3] (T varies), `label` (ClassLabel: the
class names sorted; -1 for unlabelled clips), `clip_id` (text, e.g.
`train/abseiling/<youtube_id>_<start>_<end>`), `fps` float32. Beside the shards,
`index-<split>.npz` holds every clip's `num_frames` and `label`, so training can sample
frames and read labels without decoding any video.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from lvt_jax import fileio
from lvt_jax.data import kinetics_source, video_decode

NAME = "kinetics600"
SPLITS = ("train", "validation", "test")
SUMMARY_FILE = "build_summary.json"
SKIPPED_FILE = "skipped_clips.tsv"

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Kinetics600Config(tfds.core.BuilderConfig):
    """What the stored frames are a function of; part of the config name, so variants
    (another size, frame rate or minimum length) never share files."""

    size: int = 64
    fps: float | None = None  # None: every frame at the native rate (the paper)
    min_frames: int = 16


def config_name(size: int, fps: float | None, min_frames: int) -> str:
    rate = "native" if fps is None else f"{float(fps):g}fps".replace(".", "p")
    return f"{int(size)}px_{rate}_min{int(min_frames)}"


_DEFAULT_CONFIG = Kinetics600Config(
    name=config_name(64, None, 16),
    description="64x64, native frame rate, clips of at least 16 frames (the paper).",
)


def make_config(size: int = 64, fps: float | None = None,
                min_frames: int = 16) -> Kinetics600Config:
    """The builder config for these settings (the registered one for the defaults)."""
    if int(size) < 1:
        raise ValueError(f"kinetics.size must be >= 1, got {size}.")
    if fps is not None and not float(fps) > 0:
        raise ValueError(f"kinetics.fps must be > 0 (or None for the native rate), got {fps}.")
    if int(min_frames) < 1:
        raise ValueError(f"kinetics.min_frames must be >= 1, got {min_frames}.")
    name = config_name(size, fps, min_frames)
    if name == _DEFAULT_CONFIG.name:
        return _DEFAULT_CONFIG  # tfds rejects a new object named like a registered config
    return Kinetics600Config(
        name=name, description=f"{size}x{size}, fps={fps or 'native'}, >= {min_frames} frames.",
        size=int(size), fps=None if fps is None else float(fps), min_frames=int(min_frames))


def make_features(size: int, class_names: list[str] | None = None,
                  num_classes: int | None = None) -> tfds.features.FeaturesDict:
    """The stored features. Class names are unknown until the source is listed; readers
    get them back from the prepared directory (`label.labels.txt`)."""
    if class_names is not None:
        label = tfds.features.ClassLabel(names=class_names)
    elif num_classes is not None:
        label = tfds.features.ClassLabel(num_classes=max(1, int(num_classes)))
    else:
        label = tfds.features.ClassLabel()
    return tfds.features.FeaturesDict({
        # BYTES: raw frames, numpy-decodable without TensorFlow (as the other builders).
        "video": tfds.features.Tensor(shape=(None, size, size, 3), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.BYTES),
        "label": label,
        "clip_id": tfds.features.Text(),
        "fps": tfds.features.Tensor(shape=(), dtype=np.float32),
    })


# --------------------------------------------------------------------------- parts


def _available_cores() -> int:
    """Cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _part_paths(work_dir: str, split: str, part: int) -> tuple[str, str]:
    stem = os.path.join(work_dir, f"{split}-part-{part:05d}")
    return stem + ".array_record", stem + ".json"


def _write_json(path: str, obj: Any) -> None:
    fileio.write_json(path, obj, indent=1)


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def build_part(task: dict) -> dict:
    """Decodes one work item's clips into one array_record file; returns its record.

    Runs in a pool worker. Idempotent: a part whose JSON record exists is not redone.
    `task`: work_dir, split, part, clips [(clip_id, absolute path or None, label)], size,
    fps, min_frames, num_classes.
    """
    from array_record.python import array_record_module
    from tensorflow_datasets.core import example_serializer

    data_path, json_path = _part_paths(task["work_dir"], task["split"], task["part"])
    if os.path.exists(json_path) and os.path.exists(data_path):
        return dict(_read_json(json_path), reused=True)
    features = make_features(task["size"], num_classes=task["num_classes"])
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    record: dict = {"split": task["split"], "part": task["part"], "num_frames": [],
                    "labels": [], "clip_ids": [], "skipped": []}
    t0 = time.perf_counter()
    tmp = f"{data_path}.tmp-{os.getpid()}"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    try:
        for clip_id, path, label in task["clips"]:
            if path is None:
                record["skipped"].append([clip_id, "missing", "", "no file for this CSV row"])
                continue
            try:
                video, rate = video_decode.decode_clip(
                    path, task["size"], target_fps=task["fps"], min_frames=task["min_frames"])
            except video_decode.ClipError as e:
                record["skipped"].append([clip_id, e.reason, path, str(e)])
                continue
            except Exception as e:  # noqa: BLE001 - any other failure on this clip's data
                record["skipped"].append(
                    [clip_id, "decode_error", path, f"{type(e).__name__}: {e}"])
                continue
            example = {"video": video, "label": int(label), "clip_id": clip_id,
                       "fps": np.float32(rate)}
            writer.write(serializer.serialize_example(features.encode_example(example)))
            record["num_frames"].append(int(video.shape[0]))
            record["labels"].append(int(label))
            record["clip_ids"].append(clip_id)
    finally:
        writer.close()
    fileio.commit(tmp, data_path)  # flushed before the rename: never a truncated part
    record["num_examples"] = len(record["clip_ids"])
    record["num_bytes"] = os.path.getsize(data_path)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    _write_json(json_path, record)  # written last: its presence marks the part complete
    return dict(record, reused=False)


def run_parts(tasks: list[dict], num_workers: int) -> list[dict]:
    """Every task's part record, building the missing ones on `num_workers` processes."""
    results: list[dict] = []
    todo = []
    for task in tasks:
        data_path, json_path = _part_paths(task["work_dir"], task["split"], task["part"])
        if os.path.exists(json_path) and os.path.exists(data_path):
            results.append(dict(_read_json(json_path), reused=True))
        else:
            todo.append(task)
    if results:
        log.info("kinetics600: %d of %d parts already built; building the other %d.",
                 len(results), len(tasks), len(todo))
    t0, clips = time.perf_counter(), 0

    def done(rec: dict) -> None:
        nonlocal clips
        results.append(rec)
        clips += rec["num_examples"] + len(rec["skipped"])
        log.info("kinetics600: %s part %d done (%d clips, %d skipped); %d/%d parts, "
                 "%.1f clips/s", rec["split"], rec["part"], rec["num_examples"],
                 len(rec["skipped"]), len(results), len(tasks),
                 clips / max(time.perf_counter() - t0, 1e-9))

    if num_workers <= 1 or len(todo) <= 1:
        for task in todo:
            done(build_part(task))
    elif todo:
        # spawn: a forked child of a process running JAX threads may deadlock.
        ctx = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(min(num_workers, len(todo)), mp_context=ctx)
        try:
            for future in concurrent.futures.as_completed(
                    [pool.submit(build_part, t) for t in todo]):
                done(future.result())
        except concurrent.futures.process.BrokenProcessPool as e:
            pool.shutdown(wait=True, cancel_futures=True)
            raise RuntimeError(
                "kinetics600: a decoding worker process died (out of memory, or a script "
                "that starts the build without an `if __name__ == '__main__':` guard, which "
                "'spawn' workers need). Finished parts are kept: rerun to continue, or set "
                "data.kinetics.num_workers=1 to decode in this process.") from e
        except BaseException:
            # Fail now: finished parts are kept for the restart, queued ones not started.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return sorted(results, key=lambda r: (SPLITS.index(r["split"]), r["part"]))


def make_tasks(source: kinetics_source.KineticsSource, work_dir: str,
               config: Kinetics600Config, clips_per_shard: int) -> list[dict]:
    """The fixed work items: consecutive runs of `clips_per_shard` clips of each split."""
    if int(clips_per_shard) < 1:
        raise ValueError(f"kinetics.clips_per_shard must be >= 1, got {clips_per_shard}.")
    labels = {name: i for i, name in enumerate(source.class_names)}
    tasks = []
    for split in SPLITS:
        clips = source.clips.get(split, [])
        for part, start in enumerate(range(0, len(clips), clips_per_shard)):
            tasks.append(dict(
                work_dir=work_dir, split=split, part=part, size=config.size, fps=config.fps,
                min_frames=config.min_frames, num_classes=len(source.class_names),
                clips=[(c.clip_id, None if c.path is None else os.path.join(source.root, c.path),
                        -1 if c.class_name is None else labels[c.class_name])
                       for c in clips[start:start + clips_per_shard]]))
    return tasks


def _check_plan(work_dir: str, tasks: list[dict], source: kinetics_source.KineticsSource,
                config: Kinetics600Config) -> None:
    """The work directory belongs to one clip list; a changed source must not mix in."""
    digest = hashlib.sha256(json.dumps(
        [[t["split"], t["part"], t["clips"]] for t in tasks]).encode()).hexdigest()
    plan = {"source_dir": source.root, "layout": source.layout, "config": config.name,
            "num_parts": len(tasks), "class_names": source.class_names, "clips_sha256": digest}
    path = os.path.join(work_dir, "plan.json")
    if os.path.exists(path):
        old = _read_json(path)
        if old != plan:
            diff = sorted(k for k in plan if old.get(k) != plan[k])
            raise ValueError(
                f"{work_dir} holds a partial Kinetics build of a different clip list or "
                f"settings (differing: {diff}). Delete that directory to start over, or "
                f"restore the source directory ({old.get('source_dir')}) and settings "
                "it was started with.")
    else:
        _write_json(path, plan)


# --------------------------------------------------------------------------- builder


class Kinetics600(tfds.core.GeneratorBasedBuilder):
    """Kinetics-600 clips at 64x64, all frames, with class labels; prepared from local files."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: local clips, PyAV, parallel restartable build."}
    BUILDER_CONFIGS = [_DEFAULT_CONFIG]

    def __init__(self, *, source_dir: str | os.PathLike | None = None, num_workers: int = 0,
                 clips_per_shard: int = 256, **kwargs):
        """source_dir: the local clips (only needed to prepare, not part of the dataset's
        identity). num_workers: decoding processes (0: one per CPU core).
        clips_per_shard: clips per work item and per output shard (the unit of restart).
        """
        self.source_dir = None if source_dir is None else os.fspath(source_dir)
        self.num_workers = int(num_workers) or _available_cores()
        self.clips_per_shard = int(clips_per_shard)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=make_features(self.builder_config.size),
            homepage="https://github.com/cvdfoundation/kinetics-dataset",
            disable_shuffling=True,  # record i of a split is its i-th clip by clip_id
        )

    @property
    def work_dir(self) -> str:
        """Where an unfinished build keeps its finished parts (survives restarts)."""
        return os.path.join(os.fspath(self.data_dir_root), f"{NAME}_build",
                            self.builder_config.name, str(self.version))

    def _split_generators(self, dl_manager):  # pragma: no cover - replaced below
        raise NotImplementedError("kinetics600 is prepared by _download_and_prepare.")

    def _generate_examples(self):  # pragma: no cover - replaced below
        raise NotImplementedError("kinetics600 is prepared by _download_and_prepare.")

    def _download_and_prepare(self, dl_manager, download_config=None) -> None:
        """Parallel, restartable preparation (see the module docstring)."""
        del dl_manager, download_config  # nothing is downloaded
        source = kinetics_source.locate_source(self.source_dir)
        work_dir = self.work_dir
        os.makedirs(work_dir, exist_ok=True)
        tasks = make_tasks(source, work_dir, self.builder_config, self.clips_per_shard)
        _check_plan(work_dir, tasks, source, self.builder_config)
        log.info("kinetics600: %d clips in %d parts (%s layout, %d classes) from %s; "
                 "%d worker processes; parts in %s", sum(len(t["clips"]) for t in tasks),
                 len(tasks), source.layout, len(source.class_names), source.root,
                 self.num_workers, work_dir)
        records = run_parts(tasks, self.num_workers)
        self.info.features["label"].names = source.class_names
        self._finish(source, records)

    def _finish(self, source: kinetics_source.KineticsSource, records: list[dict]) -> None:
        """Parts -> tfds shards, split infos, clip index and the skipped-clip report."""
        out_dir = os.fspath(self.data_path)  # tfds' temporary directory at this point
        infos, summary, skipped = [], {}, []
        for split in SPLITS:
            recs = [r for r in records if r["split"] == split]
            if not recs:
                continue
            full = [r for r in recs if r["num_examples"]]
            template = self._get_filename_template(split_name=split)
            for j, rec in enumerate(full):
                src = _part_paths(self.work_dir, split, rec["part"])[0]
                dst = os.fspath(template.sharded_filepath(shard_index=j, num_shards=len(full)))
                try:
                    os.link(src, dst)
                except OSError:  # another file system, or no hard links: copy
                    shutil.copyfile(src, dst)
            if full:
                infos.append(tfds.core.SplitInfo(
                    name=split, shard_lengths=[r["num_examples"] for r in full],
                    num_bytes=sum(r["num_bytes"] for r in full), filename_template=template))
                np.savez(os.path.join(out_dir, f"index-{split}.npz"),
                         num_frames=np.array([n for r in full for n in r["num_frames"]], np.int32),
                         label=np.array([n for r in full for n in r["labels"]], np.int32))
            reasons: dict[str, int] = {}
            for rec in recs:
                for clip_id, reason, path, detail in rec["skipped"]:
                    reasons[reason] = reasons.get(reason, 0) + 1
                    skipped.append((split, clip_id, reason, path, detail))
            summary[split] = {"clips": sum(r["num_examples"] + len(r["skipped"]) for r in recs),
                              "written": sum(r["num_examples"] for r in full),
                              "skipped": dict(sorted(reasons.items()))}
        if not infos:
            raise ValueError(
                f"kinetics600: none of the clips under {source.root} could be used "
                f"({summary}); see {self.work_dir}/*.json for the reason of each.")
        self.info.set_splits(tfds.core.SplitDict(infos))
        totals: dict[str, int] = {}
        for split_summary in summary.values():
            for reason, n in split_summary["skipped"].items():
                totals[reason] = totals.get(reason, 0) + n
        report = {"source_dir": source.root, "layout": source.layout,
                  "num_classes": len(source.class_names), "splits": summary,
                  "skipped": dict(sorted(totals.items())), "skipped_file": SKIPPED_FILE,
                  "reasons": video_decode.REASONS}
        with open(os.path.join(out_dir, SKIPPED_FILE), "w") as f:
            f.write("split\tclip_id\treason\tpath\tdetail\n")
            for row in skipped:
                f.write("\t".join(str(x).replace("\t", " ").replace("\n", " ")
                                  for x in row) + "\n")
        _write_json(os.path.join(out_dir, SUMMARY_FILE), report)
        final = os.path.join(os.fspath(self.data_dir_root), NAME, self.builder_config.name,
                             str(self.version))
        log.log(logging.WARNING if skipped else logging.INFO,
                "kinetics600: wrote %s; skipped %d clips %s (list: %s)",
                {s: v["written"] for s, v in summary.items()}, len(skipped), report["skipped"],
                os.path.join(final, SKIPPED_FILE))

    def _post_download_and_prepare_hook(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)  # the shards are in place now

    # --- reading helpers ------------------------------------------------------------
    def build_summary(self) -> dict:
        """The prepared dataset's build report (counts per split and skip reason)."""
        return _read_json(os.path.join(os.fspath(self.data_path), SUMMARY_FILE))

    def clip_index(self, split: str) -> dict[str, np.ndarray]:
        """{'num_frames', 'label'} int32 [N] of every clip of `split` (tfds slicing such as
        'train[:10]' or 'train[10%:]' allowed), without decoding any video."""
        base = split.split("[", 1)[0]
        with np.load(os.path.join(os.fspath(self.data_path), f"index-{base}.npz")) as f:
            index = {k: f[k] for k in ("num_frames", "label")}
        if "[" in split:
            splits = {k: v for k, v in self.info.splits.items()}
            instr = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
            if len(instr) != 1:
                raise ValueError(f"split {split!r}: only one slice of one split is supported.")
            lo, hi = instr[0].from_, instr[0].to
            index = {k: v[lo:hi] for k, v in index.items()}
        return index
