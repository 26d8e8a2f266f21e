# Sourced by the scripts: `venv NAME REQUIREMENTS` makes a cached Python virtual
# environment under $venvs/NAME, (re)built when its requirements file changes.
venvs="${KLANTBEELD_VENVS:-$HOME/.cache/klantbeeld-venvs}"
venv() {
  local dir="$venvs/$1" req="$2"
  local stamp="$dir/.requirements"
  if [ ! -x "$dir/bin/python" ] || ! cmp -s "$req" "$stamp"; then
    echo "installing $req into $dir" >&2
    rm -rf "$dir"
    mkdir -p "$venvs"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
  fi
}
