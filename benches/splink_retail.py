"""Splink on the retail dumps: the comparison for klantbeeld's benchmark.

Reads the five identity sources of SOURCES.md with DuckDB, standardises them the usual
way (lower-case e-mail, digits-only phone, compact postcode, lower-case names), trains a
Fellegi-Sunter model (u by random sampling, m by expectation maximisation on two
blocking rules), predicts pairs and clusters them. Writes a crosswalk in klantbeeld's
layout (customer_id, source_system, source_record_id) so that `klantbeeld eval` scores
both tools the same way.

usage: python splink_retail.py DUMPS_DIR OUT_PARQUET
"""

import sys

import duckdb
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on

dumps, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()

con.execute(f"""
CREATE TABLE records AS
WITH crm AS (
  SELECT 'crm' AS source_system, klant_id AS source_record_id, voornaam AS first_name,
         concat_ws(' ', nullif(tussenvoegsel, ''), achternaam) AS last_name, email, telefoon AS phone,
         postcode, geboortedatum AS birth_date
  FROM read_csv('{dumps}/crm/contacts*.csv', delim=';', header=true, all_varchar=true, union_by_name=true)
), webshop AS (
  SELECT 'webshop', CAST(account_id AS VARCHAR), first_name, last_name, email, CAST(phone AS VARCHAR), NULL, NULL
  FROM read_json('{dumps}/webshop/accounts*.jsonl', format='newline_delimited', union_by_name=true)
), pos AS (
  SELECT 'pos', card_number, split_part(full_name, ' ', 1), nullif(substr(full_name, strpos(full_name, ' ') + 1), ''),
         NULL, phone, postcode, NULL
  FROM read_csv('{dumps}/pos/loyalty_cards*.csv', header=true, all_varchar=true)
), service AS (
  SELECT 'service', CAST(ticket_id AS VARCHAR), split_part(caller_name, ' ', 1),
         nullif(substr(caller_name, strpos(caller_name, ' ') + 1), ''), caller_email, CAST(caller_phone AS VARCHAR), NULL, NULL
  FROM read_json('{dumps}/service/tickets*.jsonl', format='newline_delimited', union_by_name=true)
), email AS (
  SELECT 'email', subscriber_id, first_name, NULL, email, NULL, NULL, NULL
  FROM read_csv('{dumps}/email/subscribers*.csv', header=true, all_varchar=true)
), everyone AS (
  SELECT * FROM crm UNION ALL SELECT * FROM webshop UNION ALL SELECT * FROM pos
  UNION ALL SELECT * FROM service UNION ALL SELECT * FROM email
)
SELECT concat(source_system, ':', source_record_id) AS unique_id, source_system, source_record_id,
       nullif(lower(trim(first_name)), '') AS first_name,
       nullif(lower(regexp_replace(trim(last_name), '^(van der|van den|van de|van|de|der|den|ter|ten) ', '')), '') AS surname,
       nullif(lower(trim(email)), '') AS email,
       nullif(right(regexp_replace(phone, '[^0-9]', '', 'g'), 9), '') AS phone,
       nullif(upper(replace(postcode, ' ', '')), '') AS postcode,
       birth_date
FROM everyone
""")

settings = SettingsCreator(
    link_type="dedupe_only",
    comparisons=[
        cl.JaroWinklerAtThresholds("first_name", [0.9, 0.8]),
        cl.JaroWinklerAtThresholds("surname", [0.9, 0.8]),
        cl.ExactMatch("email"),
        cl.ExactMatch("phone"),
        cl.ExactMatch("postcode"),
        cl.ExactMatch("birth_date"),
    ],
    blocking_rules_to_generate_predictions=[
        block_on("email"),
        block_on("phone"),
        block_on("postcode", "surname"),
    ],
    retain_intermediate_calculation_columns=False,
)
linker = Linker(con.table("records"), settings, db_api=DuckDBAPI(con))
linker.training.estimate_probability_two_random_records_match([block_on("email")], recall=0.7)
linker.training.estimate_u_using_random_sampling(max_pairs=2e6, seed=1)
linker.training.estimate_parameters_using_expectation_maximisation(block_on("email"))
linker.training.estimate_parameters_using_expectation_maximisation(block_on("postcode", "surname"))
pairs = linker.inference.predict(threshold_match_probability=0.5)
clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(pairs, threshold_match_probability=0.95)
clusters_df = clusters.as_duckdbpyrelation()
con.register("clusters", clusters_df)
con.execute(f"""
COPY (SELECT CAST(cluster_id AS VARCHAR) AS customer_id, source_system, source_record_id FROM clusters)
TO '{out}' (FORMAT parquet)
""")
print(con.execute("SELECT count(*), count(DISTINCT customer_id) FROM read_parquet(?)", [out]).fetchone())
