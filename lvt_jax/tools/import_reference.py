"""Import checkpoints of the reference PyTorch release into this project's orbax checkpoints.

  python -m lvt_jax.tools.import_reference --config=configs/bair.py --workdir=DIR \\
      [--vqvae=SPEC] [--transformer=SPEC] [--overwrite]

Writes ``DIR/vqvae/checkpoints/<step>/`` and/or ``DIR/transformer/checkpoints/<step>/``
(orbax items ``state`` = the stage's full TrainState, ``data`` = ``{"step": step}``, the
minimal iterator state the trainer's resume accepts), which ``trainer.restore_state`` /
``--mode=...`` load as if this project had trained them.

``--vqvae`` (the reference saves the VQ-VAE as three state dicts) is one of

* the reference run's ``OUTPUT_DIR`` (e.g. ``pretrained/PR-DVQVAE2``) holding
  ``netE/``, ``netG/``, ``netC/``; in each, the checkpoint named by fvcore's
  ``last_checkpoint`` file, else ``model_final.pth``, else the newest ``model_*``;
* three files ``NETE,NETG,NETC`` separated by commas;
* one file holding all three, its keys prefixed ``netE.`` / ``netG.`` / ``netC.``
  (or the reference model's own ``encoder.`` / ``generator.`` / ``codebook.``);
  with torch also a dict ``{'netE': ..., 'netG': ..., 'netC': ...}``.

``--transformer`` is the transformer's checkpoint file (``netG/model_final.pth`` of
the transformer run) or a directory holding it (or holding ``netG/``).

Files: ``.pth`` / ``.pt`` / ``.pkl`` are read with torch (``torch.load(...,
weights_only=True)``; torch is an optional extra: ``pip install -e '.[torch]'`` in
the checkout, or ``pip install torch``); ``.npz`` files holding the same state dicts
(same tensor names, numpy layout unchanged) need no torch. An fvcore
checkpoint ``{'model': state_dict, 'iteration': i}`` gives step ``i + 1`` (fvcore
stores the index of the last finished iteration); in ``.npz`` files an
``iteration`` entry plays that role. A common ``module.`` prefix
(DistributedDataParallel) is stripped.

The VQ-VAE state gets a fresh Adam state, the transformer a fresh optimiser
state of its stage; the EMA statistics of the codebooks come from ``netC``
(see :func:`lvt_jax.tools.reference_mapping.vqvae_from_reference`).
Existing checkpoints of a stage are never replaced unless ``--overwrite``
(which deletes that stage's ``checkpoints/`` directory first).
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from lvt_jax import fileio
from lvt_jax.tools.reference_mapping import (  # noqa: F401  (re-exported API)
    ReferenceImportError, reference_transformer_spec, reference_vqvae_spec,
    transformer_from_reference, vqvae_from_reference)

log = logging.getLogger(__name__)

TORCH_SUFFIXES = ('.pth', '.pt', '.pkl', '.bin', '.ckpt')
VQVAE_PARTS = ('netE', 'netG', 'netC')
# Prefixes of a combined VQ-VAE file: ours, and the reference VQVAEModel's attribute names.
_PART_PREFIXES = {'netE': ('netE.', 'encoder.'), 'netG': ('netG.', 'generator.'),
                  'netC': ('netC.', 'codebook.')}


class ImportToolError(RuntimeError):
  """A problem with the inputs or the workdir (not with tensor names/shapes)."""


# ---------------------------------------------------------------------------
# Reading state dicts
# ---------------------------------------------------------------------------


def _import_torch():
  try:
    import torch  # noqa: WPS433 (optional dependency, imported lazily)
  except ImportError as e:
    raise ImportToolError(
        'reading PyTorch checkpoints needs torch, an optional extra of lvt_jax: in the '
        "checkout run `pip install -e '.[torch]'`, or `pip install torch` (CPU-only wheel, "
        'enough here: `pip install torch --index-url https://download.pytorch.org/whl/cpu`). '
        'Alternatively convert the state dicts to .npz files (same tensor names) and pass '
        'those.') from e
  return torch


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, 'detach'):  # torch.Tensor
    v = v.detach().cpu()
    if str(v.dtype) in ('torch.bfloat16', 'torch.float16'):
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def _is_array(v) -> bool:
  return hasattr(v, 'detach') or isinstance(v, np.ndarray)


def _flatten(obj: Mapping, prefix: str, out: Dict[str, np.ndarray],
             iterations: List[int]) -> None:
  """Nested mappings -> dotted names. An fvcore checkpoint ``{'model': sd, 'iteration': i, ...}``
  contributes only its model (optimizer/scheduler entries are ignored)."""
  if isinstance(obj.get('model'), Mapping):
    it = obj.get('iteration')
    if it is not None:
      iterations.append(int(it))
    _flatten(obj['model'], prefix, out, iterations)
    return
  if isinstance(obj.get('state_dict'), Mapping):
    _flatten(obj['state_dict'], prefix, out, iterations)
    return
  for k, v in obj.items():
    if _is_array(v):
      if k == 'iteration' and np.ndim(_to_numpy(v)) == 0:
        iterations.append(int(_to_numpy(v)))
      else:
        out[prefix + str(k)] = _to_numpy(v)
    elif isinstance(v, Mapping):
      _flatten(v, f'{prefix}{k}.', out, iterations)
    elif k == 'iteration' and isinstance(v, (int, np.integer)):
      iterations.append(int(v))
    else:
      log.info('ignoring non-tensor entry %r in the checkpoint', prefix + str(k))


def _strip_prefix(sd: Dict[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
  if sd and all(k.startswith(prefix) for k in sd):
    return {k[len(prefix):]: v for k, v in sd.items()}
  return sd


def read_state_dict(path: str) -> Tuple[Dict[str, np.ndarray], Optional[int]]:
  """One checkpoint file -> (flat ``{name: array}``, fvcore iteration or None)."""
  if not os.path.isfile(path):
    raise ImportToolError(f'no such checkpoint file: {path}')
  out: Dict[str, np.ndarray] = {}
  iterations: List[int] = []
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as z:
      data = {k: z[k] for k in z.files}
    _flatten(data, '', out, iterations)
  else:
    if not path.endswith(TORCH_SUFFIXES):
      log.warning('%s: unknown suffix, reading it with torch.load', path)
    torch = _import_torch()
    try:
      obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickles with arbitrary objects are refused on purpose
      raise ImportToolError(f'{path}: torch.load(weights_only=True) failed: {e}') from e
    if not isinstance(obj, Mapping):
      raise ImportToolError(f'{path}: expected a state dict (a mapping), got {type(obj).__name__}')
    _flatten(obj, '', out, iterations)
  out = _strip_prefix(out, 'module.')
  if not out:
    raise ImportToolError(f'{path}: holds no tensors')
  return out, (max(iterations) if iterations else None)


def find_checkpoint(directory: str) -> str:
  """The checkpoint file fvcore would resume from in ``directory``."""
  marker = os.path.join(directory, 'last_checkpoint')
  if os.path.isfile(marker):
    with open(marker) as f:
      name = f.read().strip()
    if name and os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  for name in ('model_final.pth', 'model_final.npz'):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  files = sorted(glob.glob(os.path.join(directory, 'model_*')))
  if not files:
    files = sorted(f for f in glob.glob(os.path.join(directory, '*'))
                   if f.endswith(TORCH_SUFFIXES + ('.npz',)))
  if not files:
    raise ImportToolError(f'no checkpoint file in {directory}')
  return files[-1]


def _split_combined(sd: Dict[str, np.ndarray], path: str) -> Dict[str, Dict[str, np.ndarray]]:
  parts: Dict[str, Dict[str, np.ndarray]] = {p: {} for p in VQVAE_PARTS}
  stray = []
  for k, v in sd.items():
    for part, prefixes in _PART_PREFIXES.items():
      pre = next((p for p in prefixes if k.startswith(p)), None)
      if pre is not None:
        parts[part][k[len(pre):]] = v
        break
    else:
      stray.append(k)
  if stray:
    raise ReferenceImportError(
        f'the VQ-VAE file {path}', unexpected=[(k, np.shape(sd[k])) for k in stray],
        notes=['a single VQ-VAE file must prefix every tensor with netE. / netG. / netC. '
               '(or encoder. / generator. / codebook.)'])
  for part in VQVAE_PARTS:
    parts[part] = _strip_prefix(parts[part], 'module.')
  return parts


def _step_of(iteration: Optional[int]) -> int:
  return int(iteration) + 1 if iteration is not None and iteration >= 0 else 0


def load_vqvae(spec: str) -> Tuple[Dict[str, Dict[str, np.ndarray]], int]:
  """``--vqvae`` -> ({'netE': sd, 'netG': sd, 'netC': sd}, step)."""
  if os.path.isdir(spec):
    paths = []
    for part in VQVAE_PARTS:
      sub = os.path.join(spec, part)
      if not os.path.isdir(sub):
        raise ImportToolError(f'{spec} is a directory but has no {part}/ sub-directory; pass '
                              'the reference run\'s OUTPUT_DIR (with netE/, netG/, netC/), '
                              'three files NETE,NETG,NETC, or one combined file.')
      paths.append(find_checkpoint(sub))
  elif ',' in spec:
    paths = [p.strip() for p in spec.split(',')]
    if len(paths) != 3:
      raise ImportToolError(f'--vqvae={spec}: expected three files NETE,NETG,NETC')
  else:
    sd, it = read_state_dict(spec)
    return _split_combined(sd, spec), _step_of(it)
  parts, its = {}, {}
  for part, path in zip(VQVAE_PARTS, paths):
    log.info('reading %s from %s', part, path)
    parts[part], its[part] = read_state_dict(path)
  known = {p: i for p, i in its.items() if i is not None}
  if len(set(known.values())) > 1:
    log.warning('netE / netG / netC come from different iterations %s; using the latest.', known)
  return parts, _step_of(max(known.values()) if known else None)


def load_transformer(spec: str) -> Tuple[Dict[str, np.ndarray], int]:
  """``--transformer`` -> (state dict, step)."""
  path = spec
  if os.path.isdir(spec):
    sub = os.path.join(spec, 'netG')
    path = find_checkpoint(sub if os.path.isdir(sub) else spec)
  log.info('reading the transformer from %s', path)
  sd, it = read_state_dict(path)
  sd = _strip_prefix(sd, 'model.')  # VideoTransformerModel.state_dict() of the meta-arch
  return sd, _step_of(it)


# ---------------------------------------------------------------------------
# Writing checkpoints
# ---------------------------------------------------------------------------


def _paths(tree) -> Dict[str, Tuple[Tuple[int, ...], Any]]:
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): (tuple(np.shape(x)), getattr(x, 'dtype', None))
          for p, x in leaves}


def _check_tree(what: str, got, want) -> None:
  """Structure and shapes of a converted tree against the stage's own (abstract) tree."""
  g, w = _paths(got), _paths(want)
  missing = [(k, w[k][0]) for k in w if k not in g]
  unexpected = [(k, g[k][0]) for k in g if k not in w]
  mismatched = [(k, w[k][0], g[k][0]) for k in w if k in g and g[k][0] != w[k][0]]
  if missing or unexpected or mismatched:
    raise ReferenceImportError(
        f'{what} (converted tree vs this project\'s model)', missing=missing,
        unexpected=unexpected, mismatched=mismatched,
        notes=['the converted parameters do not fit the model built from --config'])


def _stage_for(config, name: str):
  if name == 'vqvae':
    from lvt_jax.stages.vqvae import VQVAEStage
    return VQVAEStage(config)
  try:
    from lvt_jax.stages.transformer import TransformerStage
  except ImportError as e:
    raise ImportToolError(f'this checkout has no transformer stage '
                          f'(lvt_jax.stages.transformer): {e}') from e
  return TransformerStage(config)


def build_state(stage, params, extra, step: int):
  """A full TrainState of ``stage`` holding the imported values.

  Structure, shapes and dtypes come from ``jax.eval_shape(stage.init)``, so the
  state is exactly what the trainer creates and restores. Optimiser state:
  fresh, from ``stage.tx.init(params)`` when the stage exposes its optimiser,
  else the (fresh) one of ``stage.init``. ``rng``: the one the trainer derives
  from ``config.seed``. Arrays live on one local device: orbax writes those
  fastest, and ``trainer.restore_state`` re-shards them onto any mesh.
  """
  import flax.linen as nn
  import jax

  rng = jax.random.key_data(jax.random.key(int(stage.config.seed)))
  abstract = nn.unbox(jax.eval_shape(stage.init, rng))
  _check_tree(f'{stage.name} parameters', params, abstract.params)
  _check_tree(f'{stage.name} non-gradient variables', extra, abstract.extra)
  device = jax.local_devices()[0]

  def put(x, like):
    return jax.device_put(np.asarray(x, like.dtype), device)

  params = jax.tree.map(put, params, abstract.params)
  extra = jax.tree.map(put, extra, abstract.extra)
  tx = getattr(stage, 'tx', None)
  if tx is not None:
    opt_state = jax.jit(tx.init)(params)
  else:
    opt_state = nn.unbox(jax.jit(stage.init)(rng)).opt_state
  state = abstract.replace(step=np.asarray(step, np.int32), params=params,
                           opt_state=opt_state, extra=extra, rng=np.asarray(rng))
  try:
    return jax.tree.map(put, state, abstract)
  except ValueError as e:  # tree structure differs (e.g. an optimiser state of another shape)
    raise ImportToolError(f'{stage.name}: the built state does not match the stage\'s: {e}') \
        from e


def _existing_steps(stage, workdir: str) -> List[int]:
  ckpt_dir = fileio.join(workdir, stage.name, 'checkpoints')
  if not fileio.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in fileio.listdir(ckpt_dir) if n.isdigit())


def write_checkpoint(stage, workdir: str, state, step: int, overwrite: bool) -> str:
  from lvt_jax import trainer
  ckpt_dir = fileio.join(workdir, stage.name, 'checkpoints')
  _refuse_existing(stage, workdir, overwrite)
  if fileio.isdir(ckpt_dir) and overwrite:
    log.warning('--overwrite: deleting %s', ckpt_dir)
    fileio.rmtree(ckpt_dir)
  ckpt = trainer.checkpointer_for(stage, workdir, async_save=False)
  try:
    # The data iterators' set_state needs a 'step' entry (the trainer calls it on every
    # resume); the reference's data position has no meaning here, so the stream simply
    # continues at batch `step` of this project's (deterministic) order.
    ckpt.save(step, state, {'step': int(step)}, force=True)
    ckpt.wait()
  finally:
    ckpt.close()
  return ckpt.step_dir(step)


def reference_variables(config, name: str, spec: str, *,
                        allow_missing_buffers: bool = False) -> Tuple[Any, Any, int]:
  """A reference checkpoint of stage ``name`` -> ``(params, extra, step)`` for the model
  ``config`` describes: what the import writes, and what fine-tuning with
  ``--config.<name>.init_from=SPEC`` starts from (``lvt_jax.init_from``).

  ``spec`` as ``--vqvae`` / ``--transformer``; ``extra`` holds the VQ-VAE's codebooks and
  their EMA statistics (``{'vq': ...}``), ``{}`` for the transformer.
  """
  if name == 'vqvae':
    parts, step = load_vqvae(spec)
    d = config.data
    n = int(config.vqvae.train.batch_size) * (int(d.image_size) // 4) ** 2
    params, vq = vqvae_from_reference(parts['netE'], parts['netG'], parts['netC'],
                                      config.vqvae.model, samples_per_update=n)
    return params, {'vq': vq}, step
  if name == 'transformer':
    sd, step = load_transformer(spec)
    return transformer_from_reference(sd, config.transformer.model,
                                      allow_missing_buffers=allow_missing_buffers), {}, step
  raise ImportToolError(f'the reference release has no {name!r} stage (only vqvae and '
                        'transformer)')


def import_checkpoints(config, workdir: str, *, vqvae: Optional[str] = None,
                       transformer: Optional[str] = None, overwrite: bool = False,
                       vqvae_step: Optional[int] = None,
                       transformer_step: Optional[int] = None,
                       allow_missing_buffers: bool = False) -> Dict[str, str]:
  """Converts and writes the given reference checkpoints; returns ``{stage: checkpoint dir}``.

  Everything is read and validated before anything is written.
  """
  if not vqvae and not transformer:
    raise ImportToolError('nothing to import: pass --vqvae and/or --transformer')
  if not workdir:
    raise ImportToolError('pass --workdir=DIR (the checkpoints are written under it)')
  for flag, value in (('vqvae_step', vqvae_step), ('transformer_step', transformer_step)):
    if value is not None and int(value) < 0:
      raise ImportToolError(f'--{flag} must be >= 0, got {value}')
  jobs = []  # (stage, params, extra, step)
  if vqvae:
    stage = _stage_for(config, 'vqvae')
    _refuse_existing(stage, workdir, overwrite)
    params, extra, step = reference_variables(config, 'vqvae', vqvae)
    jobs.append((stage, params, extra, step if vqvae_step is None else int(vqvae_step)))
  if transformer:
    if 'transformer' not in config:
      raise ImportToolError('the config has no `transformer` section')
    stage = _stage_for(config, 'transformer')
    _refuse_existing(stage, workdir, overwrite)
    params, extra, step = reference_variables(config, 'transformer', transformer,
                                              allow_missing_buffers=allow_missing_buffers)
    jobs.append((stage, params, extra, step if transformer_step is None else int(transformer_step)))

  states = [(stage, build_state(stage, params, extra, step), step)
            for stage, params, extra, step in jobs]
  written = {}
  for stage, state, step in states:
    written[stage.name] = write_checkpoint(stage, workdir, state, step, overwrite)
    log.info('%s: wrote %s (step %d)', stage.name, written[stage.name], step)
  return written


def _refuse_existing(stage, workdir: str, overwrite: bool) -> None:
  steps = _existing_steps(stage, workdir)
  if steps and not overwrite:
    raise ImportToolError(
        f'{fileio.join(workdir, stage.name, "checkpoints")} already holds checkpoints (steps '
        f'{steps}); refusing to overwrite them. Pass --overwrite to replace them.')


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/NAME.py[:VARIANT]).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Workdir to write DIR/<stage>/checkpoints/<step>/ into.')
  flags.DEFINE_string('vqvae', None, 'Reference VQ-VAE: OUTPUT_DIR with netE/ netG/ netC/, '
                      'NETE,NETG,NETC files, or one combined file (.pth or .npz).')
  flags.DEFINE_string('transformer', None, 'Reference transformer checkpoint (.pth or .npz) or '
                      'a directory holding it (or netG/).')
  flags.DEFINE_bool('overwrite', False, 'Replace existing checkpoints of the imported stages.')
  flags.DEFINE_integer('vqvae_step', None, 'Step to record (default: fvcore iteration + 1, '
                       'or 0 when the file has none).')
  flags.DEFINE_integer('transformer_step', None, 'Step to record for the transformer.')
  flags.DEFINE_bool('allow_missing_buffers', False, 'Accept transformer state dicts without the '
                    "reference's constant buffers (bank indices, masks, timescales).")
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  """absl entry point (the flags are defined by :func:`_define_flags`)."""
  del argv
  import sys

  from absl import flags
  FLAGS = flags.FLAGS  # noqa: N806
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s',
                      datefmt='%H:%M:%S')
  for name in ('absl', 'orbax', 'jax'):
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    written = import_checkpoints(
        FLAGS.config, FLAGS.workdir, vqvae=FLAGS.vqvae, transformer=FLAGS.transformer,
        overwrite=FLAGS.overwrite, vqvae_step=FLAGS.vqvae_step,
        transformer_step=FLAGS.transformer_step,
        allow_missing_buffers=FLAGS.allow_missing_buffers)
  except (ReferenceImportError, ImportToolError) as e:
    print(f'import_reference: error: {e}', file=sys.stderr)
    sys.exit(2)
  for stage, path in written.items():
    print(f'{stage}: {path}')


if __name__ == '__main__':
  from absl import app
  _define_flags()  # only here: importing this module must not define (duplicate) flags
  app.run(main)
