"""Local video files -> a tfds dataset (array_record): the preparation every local-video
dataset shares (Kinetics-600, `video_folder`).

Why a custom preparation: a video dataset is many files that each need a video decode,
so the build must use every core and survive interruptions, and some real files are
broken. tfds' own parallel path needs Apache Beam, so the builders here write the
array_record shards themselves:

1. The subclass lists the source (`LocalVideoBuilder.locate` -> `ClipListing`): every
   file of every split, with a class name and, for files known to be unusable before any
   decoding (an image, a CSV row without a file...), the reason. Nothing is downloaded;
   a missing or empty source fails within seconds.
2. The clips of each split are cut into fixed work items ("parts", `clips_per_shard`
   clips each). A process pool decodes them (`video_decode.decode_clip`: PyAV, centre
   crop, Lanczos to `size`, native frame rate unless `fps` is set, at least `min_frames`)
   and writes each part as one array_record file plus a JSON record of what it holds,
   both atomically (temporary name, then rename), under
   `<data_dir>/<name>_build/<config>/<version>/`. A restarted build finds the finished
   parts there and only does the missing ones. `plan.json` pins the clip list, so a
   restart against a changed source fails instead of mixing the two.
3. When every part exists, the non-empty parts become the tfds shards of each split
   (hard links, no copy), the split infos and metadata are written, and tfds renames the
   dataset directory into place; the work directory is removed afterwards.

Bad files never stop a build and never go unnoticed: they are skipped, and the dataset
directory gets `build_summary.json` (counts per split and reason) and `skipped_clips.tsv`
(every skipped file with its reason and the decoder's message); the totals are logged.

Features per clip: `video` uint8 [T, size, size, 3] (T varies), `label` (ClassLabel: the
class names sorted; -1 for unlabelled clips), `clip_id` (text), `fps` float32. Beside the
shards, `index-<split>.npz` holds every clip's `num_frames` and `label`, so training can
sample frames and read labels without decoding any video.
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
from lvt_jax.data import video_decode, video_listing

SUMMARY_FILE = "build_summary.json"
SKIPPED_FILE = "skipped_clips.tsv"

REASONS = {**video_decode.REASONS, **video_listing.LISTING_REASONS}  # the report's legend
Clip, ClipListing = video_listing.Clip, video_listing.ClipListing

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(eq=False)
class VideoBuildConfig(tfds.core.BuilderConfig):
    """What the stored frames are a function of; part of the config name, so variants
    (another size, frame rate or minimum length) never share files."""

    size: int = 64
    fps: float | None = None  # None: every frame at the native rate (the paper)
    min_frames: int = 16
    max_frames: int | None = None  # longer videos are stored as several pieces (None: never)


def frames_name(size: int, fps: float | None, min_frames: int,
                max_frames: int | None = None) -> str:
    """The part of a config name that the stored frames depend on, e.g. 64px_native_min16."""
    rate = "native" if fps is None else f"{float(fps):g}fps".replace(".", "p")
    cap = "" if not max_frames else f"_max{int(max_frames)}"
    return f"{int(size)}px_{rate}_min{int(min_frames)}{cap}"


def check_frame_settings(section: str, size: int, fps: float | None, min_frames: int,
                         max_frames: int | None = None) -> None:
    """Raises naming the config field (`data.<section>.*`) of a bad setting."""
    if int(size) < 1:
        raise ValueError(f"data.image_size must be >= 1, got {size}.")
    if fps is not None and not float(fps) > 0:
        raise ValueError(f"data.{section}.fps must be > 0 (or None for the native rate), "
                         f"got {fps}.")
    if int(min_frames) < 1:
        raise ValueError(f"data.{section}.min_frames must be >= 1, got {min_frames}.")
    if max_frames and int(max_frames) < 2 * int(min_frames):
        raise ValueError(f"data.{section}.max_frames={max_frames} must be 0 (no limit) or at "
                         f"least twice min_frames={min_frames}, so that the pieces of a long "
                         "video are never shorter than min_frames.")


def pieces(num_frames: int, max_frames: int | None) -> list[tuple[int, int]]:
    """[start, stop) of the near-equal pieces a video is stored as: one piece unless it is
    longer than max_frames (a long video as one example would be read whole for every
    frame or clip drawn from it)."""
    count = 1 if not max_frames else -(-int(num_frames) // int(max_frames))
    bounds = np.linspace(0, num_frames, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def make_features(size: int, class_names: list[str] | None = None,
                  num_classes: int | None = None) -> tfds.features.FeaturesDict:
    """The stored features. Class names are unknown until the source is listed; readers
    get them back from the prepared directory (`label.labels.txt`)."""
    if class_names:
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


def available_cores() -> int:
    """Cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def part_paths(work_dir: str, split: str, part: int) -> tuple[str, str]:
    stem = os.path.join(work_dir, f"{split}-part-{part:05d}")
    return stem + ".array_record", stem + ".json"


def write_json(path: str, obj: Any) -> None:
    fileio.write_json(path, obj, indent=1)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def build_part(task: dict) -> dict:
    """Decodes one work item's clips into one array_record file; returns its record.

    Runs in a pool worker. Idempotent: a part whose JSON record exists is not redone.
    `task`: work_dir, split, part, clips [(clip_id, absolute path or None, label, skip
    reason or None, detail)], size, fps, min_frames, max_frames, num_classes. A video longer
    than max_frames becomes several examples, `<clip_id>@<first frame>`.
    """
    from array_record.python import array_record_module
    from tensorflow_datasets.core import example_serializer

    data_path, json_path = part_paths(task["work_dir"], task["split"], task["part"])
    if os.path.exists(json_path) and os.path.exists(data_path):
        return dict(read_json(json_path), reused=True)
    features = make_features(task["size"], num_classes=task["num_classes"])
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    record: dict = {"split": task["split"], "part": task["part"], "num_frames": [],
                    "labels": [], "clip_ids": [], "skipped": [], "num_videos": 0}
    t0 = time.perf_counter()
    tmp = f"{data_path}.tmp-{os.getpid()}"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    try:
        for clip_id, path, label, skip, detail in task["clips"]:
            if skip is not None or path is None:
                reason = skip or "missing"
                record["skipped"].append([clip_id, reason, path or "", detail or REASONS[reason]])
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
            spans = pieces(len(video), task.get("max_frames"))
            for start, stop in spans:
                piece_id = clip_id if len(spans) == 1 else f"{clip_id}@{start}"
                example = {"video": video[start:stop], "label": int(label),
                           "clip_id": piece_id, "fps": np.float32(rate)}
                writer.write(serializer.serialize_example(features.encode_example(example)))
                record["num_frames"].append(stop - start)
                record["labels"].append(int(label))
                record["clip_ids"].append(piece_id)
            record["num_videos"] += 1
    finally:
        writer.close()
    fileio.commit(tmp, data_path)  # flushed before the rename: never a truncated part
    record["num_examples"] = len(record["clip_ids"])
    record["num_bytes"] = os.path.getsize(data_path)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(json_path, record)  # written last: its presence marks the part complete
    return dict(record, reused=False)


def run_parts(tasks: list[dict], num_workers: int, name: str, section: str,
              splits: tuple[str, ...]) -> list[dict]:
    """Every task's part record, building the missing ones on `num_workers` processes.

    `name` prefixes the log lines; `section` is the config section (data.<section>) named
    in messages."""
    results: list[dict] = []
    todo = []
    for task in tasks:
        data_path, json_path = part_paths(task["work_dir"], task["split"], task["part"])
        if os.path.exists(json_path) and os.path.exists(data_path):
            results.append(dict(read_json(json_path), reused=True))
        else:
            todo.append(task)
    if results:
        log.info("%s: %d of %d parts already built; building the other %d.",
                 name, len(results), len(tasks), len(todo))
    t0, clips = time.perf_counter(), 0

    def done(rec: dict) -> None:
        nonlocal clips
        results.append(rec)
        videos = rec.get("num_videos", rec["num_examples"])
        clips += videos + len(rec["skipped"])
        log.info("%s: %s part %d done (%d clips, %d skipped); %d/%d parts, %.1f clips/s",
                 name, rec["split"], rec["part"], videos, len(rec["skipped"]),
                 len(results), len(tasks), clips / max(time.perf_counter() - t0, 1e-9))

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
                f"{name}: a decoding worker process died (out of memory, or a script that "
                "starts the build without an `if __name__ == '__main__':` guard, which "
                "'spawn' workers need). Finished parts are kept: rerun to continue, or set "
                f"data.{section}.num_workers=1 to decode in this process.") from e
        except BaseException:
            # Fail now: finished parts are kept for the restart, queued ones not started.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return sorted(results, key=lambda r: (splits.index(r["split"]), r["part"]))


def make_tasks(listing: ClipListing, work_dir: str, config: VideoBuildConfig,
               clips_per_shard: int, splits: tuple[str, ...], section: str) -> list[dict]:
    """The fixed work items: consecutive runs of `clips_per_shard` clips of each split."""
    if int(clips_per_shard) < 1:
        raise ValueError(f"data.{section}.clips_per_shard must be >= 1, got {clips_per_shard}.")
    labels = {name: i for i, name in enumerate(listing.class_names)}
    tasks = []
    for split in splits:
        clips = listing.clips.get(split, [])
        for part, start in enumerate(range(0, len(clips), clips_per_shard)):
            tasks.append(dict(
                work_dir=work_dir, split=split, part=part, size=config.size, fps=config.fps,
                min_frames=config.min_frames, max_frames=config.max_frames,
                num_classes=len(listing.class_names),
                clips=[(c.clip_id,
                        None if c.path is None else os.path.join(listing.root, c.path),
                        labels.get(c.class_name, -1), c.skip, c.detail)
                       for c in clips[start:start + clips_per_shard]]))
    return tasks


def check_plan(work_dir: str, tasks: list[dict], listing: ClipListing,
               config: VideoBuildConfig, name: str) -> None:
    """The work directory belongs to one clip list; a changed source must not mix in."""
    digest = hashlib.sha256(json.dumps(
        [[t["split"], t["part"], t["clips"]] for t in tasks]).encode()).hexdigest()
    plan = {"source_dir": listing.root, "layout": listing.layout, "config": config.name,
            "num_parts": len(tasks), "class_names": listing.class_names,
            "clips_sha256": digest}
    path = os.path.join(work_dir, "plan.json")
    if os.path.exists(path):
        old = read_json(path)
        if old != plan:
            diff = sorted(k for k in plan if old.get(k) != plan[k])
            raise ValueError(
                f"{work_dir} holds a partial {name} build of a different clip list or "
                f"settings (differing: {diff}). Delete that directory to start over, or "
                f"restore the source directory ({old.get('source_dir')}) and settings "
                "it was started with.")
    else:
        write_json(path, plan)


def summarize(records: list[dict], splits: tuple[str, ...]) -> tuple[dict, list[tuple]]:
    """Part records -> ({split: {clips, written, skipped: {reason: n}}}, skipped rows).

    `clips`: source files listed; `written`: examples stored (pieces, when long videos
    are cut); `videos`: source files that gave at least one example."""
    summary: dict = {}
    skipped: list[tuple] = []
    for split in splits:
        recs = [r for r in records if r["split"] == split]
        if not recs:
            continue
        reasons: dict[str, int] = {}
        for rec in recs:
            for clip_id, reason, path, detail in rec["skipped"]:
                reasons[reason] = reasons.get(reason, 0) + 1
                skipped.append((split, clip_id, reason, path, detail))
        videos = sum(r.get("num_videos", r["num_examples"]) for r in recs)
        summary[split] = {"clips": videos + sum(len(r["skipped"]) for r in recs),
                          "written": sum(r["num_examples"] for r in recs),
                          "skipped": dict(sorted(reasons.items()))}
        if any(r.get("num_videos", r["num_examples"]) != r["num_examples"] for r in recs):
            summary[split]["videos"] = videos
    return summary, skipped


def write_skipped(path: str, skipped: list[tuple]) -> None:
    """The skipped-clips table (TSV: split, clip_id, reason, path, detail), atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("split\tclip_id\treason\tpath\tdetail\n")
        for row in skipped:
            f.write("\t".join(str(x).replace("\t", " ").replace("\n", " ") for x in row) + "\n")
    fileio.commit(tmp, path)


# --------------------------------------------------------------------------- builder


def _quiet_custom_config(record: logging.LogRecord) -> bool:
    """Drops tfds' warning that a builder config is not a registered one."""
    return not str(record.msg).startswith("Using custom data configuration")


class LocalVideoBuilder(tfds.core.GeneratorBasedBuilder):
    """A dataset prepared from local video files; subclasses list the source.

    Subclasses set `name`, `VERSION`, `BUILDER_CONFIGS`, `SPLITS`, `SECTION` (the config
    section data.<SECTION> named in messages), `HOMEPAGE`, and implement `locate()`.
    """

    SPLITS: tuple[str, ...] = ("train", "test")
    SECTION = "video"
    HOMEPAGE = ""

    def __init__(self, *, source_dir: str | os.PathLike | None = None, num_workers: int = 0,
                 clips_per_shard: int = 256, **kwargs):
        """source_dir: the local videos (only needed to prepare, not part of the dataset's
        identity unless a subclass makes it so). num_workers: decoding processes (0: one
        per CPU core). clips_per_shard: clips per work item and per output shard (the unit
        of restart).
        """
        self.source_dir = None if source_dir is None else os.fspath(source_dir)
        self.num_workers = int(num_workers) or available_cores()
        self.clips_per_shard = int(clips_per_shard)
        absl_log = logging.getLogger("absl")
        absl_log.addFilter(_quiet_custom_config)  # configs are made per setting, on purpose
        try:
            super().__init__(**kwargs)
        finally:
            absl_log.removeFilter(_quiet_custom_config)

    def locate(self) -> ClipListing:
        """Lists the source (fast, no decoding); raises naming the expected layout."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=type(self).__doc__,
            features=make_features(self.builder_config.size),
            homepage=self.HOMEPAGE or None,
            disable_shuffling=True,  # record i of a split is its i-th clip by clip_id
        )

    @property
    def work_dir(self) -> str:
        """Where an unfinished build keeps its finished parts (survives restarts)."""
        return os.path.join(os.fspath(self.data_dir_root), f"{self.name}_build",
                            self.builder_config.name, str(self.version))

    def _split_generators(self, dl_manager):  # pragma: no cover - replaced below
        raise NotImplementedError(f"{self.name} is prepared by _download_and_prepare.")

    def _generate_examples(self):  # pragma: no cover - replaced below
        raise NotImplementedError(f"{self.name} is prepared by _download_and_prepare.")

    def _download_and_prepare(self, dl_manager, download_config=None) -> None:
        """Parallel, restartable preparation (see the module docstring)."""
        del dl_manager, download_config  # nothing is downloaded
        listing = self.locate()
        work_dir = self.work_dir
        os.makedirs(work_dir, exist_ok=True)
        tasks = make_tasks(listing, work_dir, self.builder_config, self.clips_per_shard,
                           self.SPLITS, self.SECTION)
        check_plan(work_dir, tasks, listing, self.builder_config, self.name)
        log.info("%s: %d clips in %d parts (%s layout, %d classes) from %s; %d worker "
                 "processes; parts in %s", self.name, sum(len(t["clips"]) for t in tasks),
                 len(tasks), listing.layout, len(listing.class_names), listing.root,
                 self.num_workers, work_dir)
        records = run_parts(tasks, self.num_workers, self.name, self.SECTION, self.SPLITS)
        self.info.features["label"].names = listing.class_names  # [] when unlabelled (-1)
        self._finish(listing, records)

    def check_splits(self, listing: ClipListing, summary: dict, skipped: list[tuple]) -> None:
        """Raises when the written splits cannot make a dataset (default: all empty)."""
        if not any(s["written"] for s in summary.values()):
            raise ValueError(
                f"{self.name}: none of the clips under {listing.root} could be used "
                f"({summary}); see {self.work_dir}/*.json for the reason of each.")

    def _finish(self, listing: ClipListing, records: list[dict]) -> None:
        """Parts -> tfds shards, split infos, clip index and the skipped-clip report."""
        out_dir = os.fspath(self.data_path)  # tfds' temporary directory at this point
        summary, skipped = summarize(records, self.SPLITS)
        self.check_splits(listing, summary, skipped)
        infos = []
        for split in self.SPLITS:
            full = [r for r in records if r["split"] == split and r["num_examples"]]
            if not full:
                continue
            template = self._get_filename_template(split_name=split)
            for j, rec in enumerate(full):
                src = part_paths(self.work_dir, split, rec["part"])[0]
                dst = os.fspath(template.sharded_filepath(shard_index=j, num_shards=len(full)))
                try:
                    os.link(src, dst)
                except OSError:  # another file system, or no hard links: copy
                    shutil.copyfile(src, dst)
            infos.append(tfds.core.SplitInfo(
                name=split, shard_lengths=[r["num_examples"] for r in full],
                num_bytes=sum(r["num_bytes"] for r in full), filename_template=template))
            np.savez(os.path.join(out_dir, f"index-{split}.npz"),
                     num_frames=np.array([n for r in full for n in r["num_frames"]], np.int32),
                     label=np.array([n for r in full for n in r["labels"]], np.int32))
        self.info.set_splits(tfds.core.SplitDict(infos))
        totals: dict[str, int] = {}
        for split_summary in summary.values():
            for reason, n in split_summary["skipped"].items():
                totals[reason] = totals.get(reason, 0) + n
        report = {"source_dir": listing.root, "layout": listing.layout,
                  "num_classes": len(listing.class_names), "class_names": listing.class_names,
                  "splits": summary, "skipped": dict(sorted(totals.items())),
                  "skipped_file": SKIPPED_FILE, "reasons": REASONS, **listing.notes}
        write_skipped(os.path.join(out_dir, SKIPPED_FILE), skipped)
        write_json(os.path.join(out_dir, SUMMARY_FILE), report)
        final = os.path.join(os.fspath(self.data_dir_root), self.name,
                             self.builder_config.name, str(self.version))
        log.log(logging.WARNING if skipped else logging.INFO,
                "%s: wrote %s; skipped %d clips %s (list: %s)", self.name,
                {s: v["written"] for s, v in summary.items()}, len(skipped), report["skipped"],
                os.path.join(final, SKIPPED_FILE))

    def _post_download_and_prepare_hook(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)  # the shards are in place now

    # --- reading helpers ------------------------------------------------------------
    def build_summary(self) -> dict:
        """The prepared dataset's build report (counts per split and skip reason)."""
        path = fileio.join(os.fspath(self.data_path), SUMMARY_FILE)
        summary = fileio.read_json(path)
        if summary is None:
            raise FileNotFoundError(f"{path} is missing: prepare the dataset again.")
        return summary

    def clip_index(self, split: str) -> dict[str, np.ndarray]:
        """{'num_frames', 'label'} int32 [N] of every clip of `split` (tfds slicing such as
        'train[:10]' or 'train[10%:]' allowed), without decoding any video."""
        base = split.split("[", 1)[0]
        path = fileio.join(os.fspath(self.data_path), f"index-{base}.npz")
        with fileio.open(path) as raw, np.load(raw) as f:
            index = {k: f[k] for k in ("num_frames", "label")}
        if "[" in split:
            splits = {k: v for k, v in self.info.splits.items()}
            instr = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
            if len(instr) != 1:
                raise ValueError(f"split {split!r}: only one slice of one split is supported.")
            lo, hi = instr[0].from_, instr[0].to
            index = {k: v[lo:hi] for k, v in index.items()}
        return index
