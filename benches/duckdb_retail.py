"""The DuckDB script a data engineer would write instead of klantbeeld: the bar of the
benchmark (issue #15).

It does the whole nightly job of `pipelines/retail.yaml` on the dumps of SOURCES.md, in
the stages klantbeeld reports, and writes the same three outputs:

  extract    read the five identity dumps and four fact dumps into tables
  stage      one table of identity records: names folded, particles split off, e-mail
             (gmail dots and +tags), phone (E.164, mobile or landline), postcode, house
             number, birth dates in three spellings; the latest row per source key
  resolve    rule edges (same e-mail, same mobile, same landline with a first name,
             same postcode or same surname + initial with names and birth dates that
             agree), clustered by label propagation until nothing changes
  golden     one row per customer by survivorship (most frequent names, most recent
             e-mail, phone and address, birth date by source priority), the crosswalk,
             and the fact tables joined to their customer
  enrich     the project's own model SQL files (sql/*.sql), run as they are; the two
             DataFusion spellings DuckDB writes otherwise are mapped (to_unixtime ->
             epoch, the ordered first_value aggregate -> first)
  write      customers, customer_xref and customers_enriched to Parquet (zstd)

It is written the way DuckDB is used well: SQL over the files, tables between stages,
macros for the normalisation, the engine's own string similarity functions, and no row
handled in Python. Prints one JSON object with the seconds of each stage.

usage: python duckdb_retail.py DUMPS_DIR OUT_DIR RUN_DATE SQL_DIR
"""

import json
import os
import re
import sys
import time

import duckdb

dumps, out, run_date, sql_dir = sys.argv[1:5]
os.makedirs(out, exist_ok=True)
con = duckdb.connect()
seconds = {}


def stage(name, *statements):
    start = time.perf_counter()
    for s in statements:
        con.execute(s)
    seconds[name] = round(time.perf_counter() - start, 3)


stage(
    "extract",
    f"""CREATE TABLE crm AS SELECT * FROM read_csv('{dumps}/crm/contacts*.csv', delim=';', header=true,
        all_varchar=true, union_by_name=true)""",
    f"""CREATE TABLE webshop AS SELECT * FROM read_json('{dumps}/webshop/accounts*.jsonl',
        format='newline_delimited', union_by_name=true,
        columns={{account_id: 'VARCHAR', email: 'VARCHAR', first_name: 'VARCHAR', last_name: 'VARCHAR',
                  phone: 'VARCHAR', created_at: 'TIMESTAMP', newsletter_optin: 'BOOLEAN'}})""",
    f"""CREATE TABLE pos AS SELECT * FROM read_csv('{dumps}/pos/loyalty_cards*.csv', header=true,
        all_varchar=true, union_by_name=true)""",
    f"""CREATE TABLE service AS SELECT * FROM read_json('{dumps}/service/tickets*.jsonl',
        format='newline_delimited', union_by_name=true,
        columns={{ticket_id: 'VARCHAR', caller_name: 'VARCHAR', caller_email: 'VARCHAR', caller_phone: 'VARCHAR',
                  opened_at: 'TIMESTAMP', topic: 'VARCHAR', csat: 'BIGINT'}})""",
    f"""CREATE TABLE email AS SELECT * FROM read_csv('{dumps}/email/subscribers*.csv', header=true,
        all_varchar=true, union_by_name=true)""",
    f"""CREATE TABLE orders_raw AS SELECT CAST(order_id AS VARCHAR) AS order_id, CAST(account_id AS VARCHAR) AS account_id,
        CAST(order_ts AS TIMESTAMP) AS order_ts, CAST(amount_eur AS DECIMAL(18, 2)) AS amount_eur, category,
        CAST(items AS BIGINT) AS items
        FROM read_parquet('{dumps}/webshop/orders*.parquet', union_by_name=true)""",
    f"""CREATE TABLE pos_transactions_raw AS SELECT * FROM read_csv('{dumps}/pos/transactions*.csv', header=true,
        union_by_name=true,
        columns={{card_number: 'VARCHAR', store_id: 'VARCHAR', ts: 'TIMESTAMP', amount_eur: 'DECIMAL(18, 2)'}})""",
    f"""CREATE TABLE email_events_raw AS SELECT * FROM read_csv('{dumps}/email/events*.csv', header=true,
        union_by_name=true,
        columns={{subscriber_id: 'VARCHAR', campaign_id: 'VARCHAR', event: 'VARCHAR', ts: 'TIMESTAMP'}})""",
    f"""CREATE TABLE web_sessions_raw AS SELECT CAST(session_id AS VARCHAR) AS session_id, CAST(cookie_id AS VARCHAR) AS cookie_id,
        CAST(logged_in_account_id AS VARCHAR) AS logged_in_account_id, CAST(started_at AS TIMESTAMP) AS started_at,
        CAST(pageviews AS BIGINT) AS pageviews, landing_page, viewed_category, downloaded_brochure, requested_demo
        FROM read_parquet('{dumps}/web/sessions*.parquet', union_by_name=true)""",
)

# Normalisation as macros, the way a DuckDB user shares it between sources.
macros = [
    r"""CREATE MACRO fold(s) AS nullif(trim(regexp_replace(lower(strip_accents(s)), '[^a-z ]+', ' ', 'g')), '')""",
    r"""CREATE MACRO core(s) AS nullif(regexp_replace(fold(s),
        '^((van|von|de|der|den|het|ter|ten|te|in|op|t|la|le|du|da|del|di)\s+)+', ''), '')""",
    r"""CREATE MACRO email_norm(e) AS CASE WHEN lower(trim(e)) SIMILAR TO '[^@ ]+@[^@ ]+\.[a-z]+' THEN
          CASE WHEN split_part(lower(trim(e)), '@', 2) IN ('gmail.com', 'googlemail.com')
               THEN replace(split_part(split_part(lower(trim(e)), '@', 1), '+', 1), '.', '') || '@gmail.com'
               ELSE split_part(split_part(lower(trim(e)), '@', 1), '+', 1) || '@' || split_part(lower(trim(e)), '@', 2)
          END END""",
    r"""CREATE MACRO phone_digits(p) AS regexp_replace(replace(p, '(0)', ''), '[^0-9+]', '', 'g')""",
    r"""CREATE MACRO phone_norm(p) AS CASE
          WHEN phone_digits(p) LIKE '+%' AND length(phone_digits(p)) BETWEEN 9 AND 16 THEN phone_digits(p)
          WHEN phone_digits(p) LIKE '00%' AND length(phone_digits(p)) BETWEEN 10 AND 17 THEN '+' || substr(phone_digits(p), 3)
          WHEN phone_digits(p) LIKE '0%' AND length(phone_digits(p)) = 10 THEN '+31' || substr(phone_digits(p), 2)
        END""",
    r"""CREATE MACRO postcode_norm(p) AS CASE WHEN regexp_full_match(upper(replace(p, ' ', '')), '[1-9][0-9]{3}[A-Z]{2}')
          THEN upper(replace(p, ' ', '')) END""",
    r"""CREATE MACRO date_norm(d) AS CAST(coalesce(try_strptime(trim(d), '%Y-%m-%d'), try_strptime(trim(d), '%d-%m-%Y'),
          try_strptime(trim(d), '%Y%m%d'), try_strptime(trim(d), '%d/%m/%Y')) AS DATE)""",
    # "J. de Vries" -> "J.", "de Vries"
    r"""CREATE MACRO given(n) AS nullif(regexp_extract(trim(n), '^(\S+)\s+\S', 1), '')""",
    r"""CREATE MACRO family(n) AS nullif(regexp_extract(trim(n), '^\S+\s+(.*)$', 1), '')""",
]
for m in macros:
    con.execute(m)

stage(
    "stage",
    """CREATE TABLE records AS
    WITH everyone AS (
      SELECT 'crm' AS source_system, klant_id AS source_record_id, voornaam AS first_name,
             concat_ws(' ', nullif(tussenvoegsel, ''), achternaam) AS last_name, email, telefoon AS phone,
             straat AS street, huisnummer AS house_number, postcode, woonplaats AS city,
             geboortedatum AS birth_date, try_cast(gewijzigd_op AS TIMESTAMP) AS updated_at
      FROM crm
      UNION ALL BY NAME
      SELECT 'webshop' AS source_system, account_id AS source_record_id, first_name, last_name, email, phone,
             created_at AS updated_at FROM webshop
      UNION ALL BY NAME
      SELECT 'pos' AS source_system, card_number AS source_record_id, given(full_name) AS first_name,
             family(full_name) AS last_name, phone, postcode, try_cast(enrolled_on AS TIMESTAMP) AS updated_at FROM pos
      UNION ALL BY NAME
      SELECT 'service' AS source_system, ticket_id AS source_record_id, given(caller_name) AS first_name,
             family(caller_name) AS last_name, caller_email AS email, caller_phone AS phone,
             opened_at AS updated_at FROM service
      UNION ALL BY NAME
      SELECT 'email' AS source_system, subscriber_id AS source_record_id, first_name, email,
             try_cast(subscribed_at AS TIMESTAMP) AS updated_at FROM email
    ), normalised AS (
      SELECT source_system, source_record_id,
             nullif(trim(first_name), '') AS first_name, nullif(trim(last_name), '') AS last_name,
             fold(first_name) AS first_key, left(fold(first_name), 1) AS first_initial,
             core(last_name) AS last_core, email_norm(email) AS email, phone_norm(phone) AS phone,
             nullif(trim(street), '') AS street, nullif(lower(replace(house_number, ' ', '')), '') AS house_number,
             postcode_norm(postcode) AS postcode, nullif(trim(city), '') AS city,
             date_norm(birth_date) AS birth_date, updated_at
      FROM everyone
      WHERE source_record_id IS NOT NULL
      QUALIFY row_number() OVER (PARTITION BY source_system, source_record_id ORDER BY updated_at DESC NULLS LAST) = 1
    )
    SELECT row_number() OVER () AS rid, *,
           CASE WHEN phone LIKE '+316%' THEN 'mobile' WHEN phone IS NOT NULL THEN 'fixed_line' END AS phone_kind
    FROM normalised""",
)

# Names that may be one person's: either is missing, or the same initial and, when both are
# written in full, alike.
con.execute("""CREATE MACRO first_ok(a, b) AS a IS NULL OR b IS NULL OR (left(a, 1) = left(b, 1)
    AND (length(a) = 1 OR length(b) = 1 OR jaro_winkler_similarity(a, b) >= 0.8))""")
con.execute("CREATE MACRO last_ok(a, b) AS a IS NULL OR b IS NULL OR jaro_winkler_similarity(a, b) >= 0.9")
con.execute("CREATE MACRO birth_ok(a, b) AS a IS NULL OR b IS NULL OR a = b")

start = time.perf_counter()
con.execute("""CREATE TABLE edges AS
    WITH shared_email AS (SELECT * FROM records WHERE email IN
           (SELECT email FROM records WHERE email IS NOT NULL GROUP BY email HAVING count(*) <= 40)),
         shared_phone AS (SELECT * FROM records WHERE phone IN
           (SELECT phone FROM records WHERE phone IS NOT NULL GROUP BY phone HAVING count(*) <= 40))
    SELECT a.rid AS a, b.rid AS b, 'same_email' AS rule FROM shared_email a JOIN shared_email b USING (email)
    WHERE a.rid < b.rid AND first_ok(a.first_key, b.first_key) AND birth_ok(a.birth_date, b.birth_date)
    UNION ALL
    SELECT a.rid, b.rid, 'same_mobile' FROM shared_phone a JOIN shared_phone b USING (phone)
    WHERE a.rid < b.rid AND a.phone_kind = 'mobile' AND first_ok(a.first_key, b.first_key)
      AND last_ok(a.last_core, b.last_core) AND birth_ok(a.birth_date, b.birth_date)
    UNION ALL
    SELECT a.rid, b.rid, 'same_landline' FROM shared_phone a JOIN shared_phone b USING (phone)
    WHERE a.rid < b.rid AND a.phone_kind = 'fixed_line' AND length(a.first_key) > 1 AND length(b.first_key) > 1
      AND first_ok(a.first_key, b.first_key) AND last_ok(a.last_core, b.last_core) AND birth_ok(a.birth_date, b.birth_date)
    UNION ALL
    SELECT a.rid, b.rid, 'same_address' FROM records a JOIN records b USING (postcode)
    WHERE a.rid < b.rid AND a.last_core IS NOT NULL AND b.last_core IS NOT NULL
      AND jaro_winkler_similarity(a.last_core, b.last_core) >= 0.9 AND a.first_key IS NOT NULL AND b.first_key IS NOT NULL
      AND first_ok(a.first_key, b.first_key) AND birth_ok(a.birth_date, b.birth_date)
      AND (a.house_number = b.house_number OR a.birth_date = b.birth_date
           OR (length(a.first_key) > 1 AND a.first_key = b.first_key))
    UNION ALL
    SELECT a.rid, b.rid, 'same_name_birth_date' FROM records a JOIN records b USING (last_core, first_initial)
    WHERE a.rid < b.rid AND a.birth_date = b.birth_date AND first_ok(a.first_key, b.first_key)""")
# Label propagation: every record takes the smallest label among itself and its
# neighbours, until no label changes.
con.execute("CREATE TABLE links AS SELECT a, b, rule FROM edges UNION ALL SELECT b, a, rule FROM edges")
con.execute("CREATE TABLE labels AS SELECT rid, rid AS label FROM records")
rounds = 0
while True:
    rounds += 1
    changed = con.execute("""UPDATE labels SET label = m.label
        FROM (SELECT k.a AS rid, min(l.label) AS label FROM links k JOIN labels l ON l.rid = k.b GROUP BY k.a) m
        WHERE labels.rid = m.rid AND m.label < labels.label""").fetchone()[0]
    if changed == 0:
        break
seconds["resolve"] = round(time.perf_counter() - start, 3)

stage(
    "golden",
    """CREATE TABLE customer_xref AS
    SELECT 'C' || lpad(CAST(l.label AS VARCHAR), 9, '0') AS customer_id, r.source_system, r.source_record_id,
           coalesce(m.rule, 'singleton') AS matched_by
    FROM records r JOIN labels l USING (rid) LEFT JOIN (SELECT a AS rid, min(rule) AS rule FROM links GROUP BY a) m USING (rid)""",
    """CREATE TABLE customers AS
    WITH members AS (
      SELECT 'C' || lpad(CAST(l.label AS VARCHAR), 9, '0') AS customer_id, r.*,
             coalesce(r.updated_at, TIMESTAMP '1900-01-01') AS seen,
             CASE r.source_system WHEN 'crm' THEN 0 WHEN 'webshop' THEN 1 WHEN 'pos' THEN 2 WHEN 'service' THEN 3 ELSE 4 END
               AS priority
      FROM records r JOIN labels l USING (rid)
    )
    SELECT customer_id,
           coalesce(mode(first_name) FILTER (WHERE length(first_key) > 1), mode(first_name)) AS first_name,
           mode(last_name) AS last_name,
           arg_max(email, seen) FILTER (WHERE email IS NOT NULL) AS email,
           arg_max(phone, seen) FILTER (WHERE phone IS NOT NULL) AS phone,
           arg_min(birth_date, priority) FILTER (WHERE birth_date IS NOT NULL) AS birth_date,
           arg_max({'street': street, 'house_number': house_number, 'postcode': postcode, 'city': city}, seen)
             FILTER (WHERE postcode IS NOT NULL) AS address,
           count(*) AS record_count,
           string_agg(DISTINCT source_system, ',' ORDER BY source_system) AS source_systems,
           min(updated_at) AS first_seen_at, max(updated_at) AS last_updated_at
    FROM members GROUP BY customer_id""",
    """CREATE OR REPLACE TABLE customers AS
    SELECT * EXCLUDE (address), address.street, address.house_number, address.postcode, address.city FROM customers""",
    # The facts with their customer, under the names the model SQL reads.
    """CREATE TABLE orders AS SELECT x.customer_id, o.* FROM orders_raw o LEFT JOIN customer_xref x
         ON x.source_system = 'webshop' AND x.source_record_id = o.account_id""",
    """CREATE TABLE pos_transactions AS SELECT x.customer_id, t.* FROM pos_transactions_raw t LEFT JOIN customer_xref x
         ON x.source_system = 'pos' AND x.source_record_id = t.card_number""",
    """CREATE TABLE email_events AS SELECT x.customer_id, e.* FROM email_events_raw e LEFT JOIN customer_xref x
         ON x.source_system = 'email' AND x.source_record_id = e.subscriber_id""",
    """CREATE TABLE web_sessions AS SELECT x.customer_id, w.* FROM web_sessions_raw w LEFT JOIN customer_xref x
         ON x.source_system = 'webshop' AND x.source_record_id = w.logged_in_account_id""",
    """CREATE OR REPLACE TABLE service AS SELECT x.customer_id, s.* FROM service s LEFT JOIN customer_xref x
         ON x.source_system = 'service' AND x.source_record_id = s.ticket_id""",
)

variables = {"run_date": run_date}


def model_sql(name):
    text = open(os.path.join(sql_dir, f"{name}.sql")).read()
    text = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: variables.get(m.group(1), m.group(2) or ""), text)
    return text.replace("to_unixtime(", "epoch(").replace("first_value(", "first(")


models = ["purchases", "refunds", "rfm", "clv", "last_sign_of_life", "email_engagement", "preferences", "intent",
          "segments", "customers_enriched"]
# The models are DataFusion SQL, where `/` between integers divides whole numbers (rfm's
# quintiles); DuckDB's `/` would give a fraction.
con.execute("SET integer_division = true")
stage("enrich", *[f"CREATE TABLE {m} AS {model_sql(m)}" for m in models])

stage(
    "write",
    *[f"COPY {t} TO '{out}/{t}.parquet' (FORMAT parquet, COMPRESSION zstd)"
      for t in ("customers", "customer_xref", "customers_enriched")],
)
seconds["label_propagation_rounds"] = rounds
print(json.dumps(seconds))
