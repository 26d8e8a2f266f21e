//! The published Parquet as warehouses and notebooks read it: pyarrow, DuckDB and Polars
//! (installed by scripts/test) see decimals for money, microsecond UTC timestamps and
//! plain strings for ids, without casts.

mod common;

use common::*;

#[test]
fn pyarrow_duckdb_and_polars_read_the_output_with_the_expected_types() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("data"), dir.path().join("out"));
    generate(&input, 500, 4, false);
    run_retail(&input.join("dumps"), &output, &["--var", "run_date=2026-11-22"]);
    let out = output.display();
    let result = python(&format!(
        r#"
import glob, pyarrow.parquet as pq, pyarrow as pa, duckdb, polars as pl
out = "{out}"
# pyarrow
t = pq.read_table(out + "/customers_enriched")
s = t.schema
assert s.field("customer_id").type == pa.string(), s.field("customer_id").type
assert s.field("monetary_eur").type == pa.decimal128(18, 2), s.field("monetary_eur").type
assert s.field("predicted_clv_eur").type == pa.decimal128(18, 2)
assert s.field("last_sign_of_life_at").type == pa.timestamp("us", tz="UTC"), s.field("last_sign_of_life_at").type
assert s.field("birth_date").type == pa.date32()
assert s.field("cohort_month").type == pa.date32()
assert s.field("frequency").type == pa.int64()
x = pq.read_table(out + "/customer_xref").schema
assert x.field("source_record_id").type == pa.string()
# DuckDB
con = duckdb.connect()
types = {{r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{{out}}/customers_enriched/*.parquet')").fetchall()}}
assert types["monetary_eur"] == "DECIMAL(18,2)", types["monetary_eur"]
assert types["last_sign_of_life_at"] == "TIMESTAMP WITH TIME ZONE", types["last_sign_of_life_at"]
assert types["customer_id"] == "VARCHAR"
n = con.execute(f"SELECT count(*) FROM read_parquet('{{out}}/customers/*.parquet')").fetchone()[0]
assert n > 0
total = con.execute(f"SELECT sum(monetary_eur) FROM read_parquet('{{out}}/customers_enriched/*.parquet')").fetchone()[0]
# Polars
df = pl.read_parquet(out + "/customers_enriched/*.parquet")
assert df.schema["monetary_eur"] == pl.Decimal(18, 2), df.schema["monetary_eur"]
assert df.schema["last_sign_of_life_at"] == pl.Datetime("us", "UTC"), df.schema["last_sign_of_life_at"]
assert df.schema["customer_id"] == pl.String
assert df.height == n
print("ok", n, total)
"#
    ));
    assert!(result.starts_with("ok "), "{result}");
}
