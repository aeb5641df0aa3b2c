"""Data layer of lvt_jax (numpy only at run time; TensorFlow is never needed).

- `pipeline`: load_videos / make_iterator / make_array_iterator / BatchIterator.
- `synthetic_pushing`: the procedural BAIR-like tfds builder `synthetic_pushing`.
- `bair`: BAIR robot pushing tfds builder, prepared from local files only.
- `kinetics`: Kinetics-600 tfds builder from local clips, with `kinetics_source` (finding
  the clips); `video_folder`: any folder of your own videos. Both prepare with
  `video_build` (parallel, restartable, bad files listed) from a `video_listing` (the files,
  no decoding), and `video_decode` (PyAV decode, crop, resize).
- `codes`: the stage-1 code dataset read by stage 2.
- `tfrecord`: minimal TFRecord reader/writer and tf.train.Example helpers.

Submodules are not imported here, so importing one does not pull in the others.
"""
