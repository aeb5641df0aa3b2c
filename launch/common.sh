# Shared by launch/tpu_vm.sh and launch/slurm_gpu.sh (sourced, not run).

# "--dry-run" anywhere in the arguments: print commands instead of running them.
# Sets dry_run (0/1) and args (the other arguments).
parse_dry_run() {
  dry_run=0
  args=()
  local a
  for a in "$@"; do
    if [[ "$a" == --dry-run ]]; then dry_run=1; else args+=("$a"); fi
  done
}

# `setup`'s arguments: at most --revision=REV (sets $revision); anything else prints usage.
parse_revision() {
  local usage=$1 a; shift
  revision=""
  for a in "$@"; do
    case "$a" in
      --revision=*) revision=${a#--revision=} ;;
      *) echo "$usage" >&2; exit 2 ;;
    esac
  done
}

# One word as the shell reads it: as it is when that is safe, else quoted.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+^-]+$ ]]; then printf '%s' "$1"; else printf '%s' "${1@Q}"; fi
}

# Runs a command, or prints it (copy-pasteable) under --dry-run.
step() {
  if (( dry_run )); then
    local a out=()
    for a in "$@"; do out+=("$(q "$a")"); done
    echo "${out[*]}"
  else
    "$@"
  fi
}

# pack_code REPO TARBALL [REVISION]: the code to ship as a .tgz. Without a revision, the
# checked-out tree: every file git tracks or would track (untracked files that are not
# ignored; edits not committed yet included; ignored outputs such as .venv/ and workdirs
# left out). With one, that commit (git archive), which must exist in this clone.
pack_code() {
  local repo=$1 tarball=$2 revision=${3:-}
  if [[ -n "$revision" ]]; then
    git -C "$repo" rev-parse --quiet --verify "$revision^{commit}" > /dev/null || {
      echo "revision $revision is not in $repo: git fetch it first" >&2; exit 2; }
    step git -C "$repo" archive --format=tar.gz -o "$tarball" "$revision"
  else
    step bash -c "set -o pipefail; cd $(q "$repo") && git ls-files -z --cached --others \
--exclude-standard | tar --null --ignore-failed-read -czf $(q "$tarball") -T -"
  fi
}

# unpack_and_install TGZ CODE_DIR VENV JAX_EXTRA: a shell script (for a machine that has
# TGZ) that replaces CODE_DIR with the archive's files and builds VENV when it does not
# match the requirements yet (a stamp of requirements.txt and pyproject.toml), so the
# environment is built once and rebuilt only when the requirements change.
unpack_and_install() {
  local tgz=$1 code=$2 venv=$3 extra=$4 jax_version
  jax_version=$(sed -n 's/^jax==//p' "$root/requirements.txt")
  echo "set -e; rm -rf $code.new && mkdir -p $code.new && tar -xzf $tgz -C $code.new" \
    "&& rm -f $tgz && rm -rf $code && mv $code.new $code && cd $code" \
    "&& stamp=\$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)" \
    "&& if [ \"\$(cat $venv/.stamp 2>/dev/null)\" = \"\$stamp\" ]; then" \
    "echo \"\$(hostname): environment $venv is up to date\";" \
    "else rm -rf $venv && python3 -m venv $venv" \
    "&& $venv/bin/pip install -q -r requirements.txt 'jax[$extra]==$jax_version' -e '.[gcs]'" \
    "&& echo \"\$stamp\" > $venv/.stamp && echo \"\$(hostname): environment $venv built\"; fi"
}

# main_command PYTHON WORKDIR [FLAGS...]: the training command every process runs
# (--config=configs/bair.py unless the flags name a config).
main_command() {
  local python=$1 workdir=$2 a has_config=0 out
  shift 2
  for a in "$@"; do [[ "$a" == --config=* || "$a" == --config ]] && has_config=1; done
  out="$python -m lvt_jax.main"
  (( has_config )) || out+=" --config=configs/bair.py"
  out+=" --workdir=$(q "$workdir") --distributed=auto"
  for a in "$@"; do out+=" $(q "$a")"; done
  echo "$out"
}
