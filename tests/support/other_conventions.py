"""Rewrites generated dumps the way another exporter writes the same SOURCES.md layout:
other column order, files split differently, UTF-8 BOM and CRLF, day-first dates with
slashes, timestamps with zone offsets or `Z` or as epoch milliseconds, phones as JSON numbers, scores as strings,
till amounts with a Dutch decimal comma, doubles instead of decimals in Parquet.

    python other_conventions.py SRC_DUMPS DST_DUMPS
"""
import datetime, glob, json, os, random, re, shutil, sys

import duckdb

src, dst = sys.argv[1], sys.argv[2]
random.seed(3)
shutil.rmtree(dst, ignore_errors=True)
for system in ["crm", "webshop", "pos", "service", "email", "web"]:
    os.makedirs(f"{dst}/{system}")
db = duckdb.connect()

# CRM: columns reordered, split in two files at another place, BOM + CRLF, dates as d/m/yyyy.
db.execute(f"create table crm as select * from read_csv('{src}/crm/*.csv', delim=';', header=true, all_varchar=true)")
db.execute(
    """create table crm2 as select email, klant_id, achternaam, voornaam, tussenvoegsel, telefoon, postcode,
       huisnummer, straat, woonplaats, replace(geboortedatum, '-', '/') geboortedatum,
       replace(gewijzigd_op, 'T', ' ') gewijzigd_op from crm"""
)
median = db.execute("select median(klant_id) from crm2").fetchone()[0]
for i, cond in enumerate([f"klant_id < '{median}'", f"klant_id >= '{median}'"]):
    path = f"{dst}/crm/contacts_part{i + 1}.csv"
    db.execute(f"copy (select * from crm2 where {cond}) to '{path}' (delimiter ';', header)")
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"\b0(\d)/0?(\d{1,2})/(\d{4})\b", r"\1/\2/\3", text)
    open(path, "w", encoding="utf-8-sig", newline="").write(text.replace("\n", "\r\n"))

# Webshop: `Z` timestamps, some phones as JSON numbers, absent keys instead of nulls,
# doubles and int32 in the orders.
with open(f"{dst}/webshop/accounts.jsonl", "w") as out:
    for path in sorted(glob.glob(f"{src}/webshop/accounts*.jsonl")):
        for line in open(path):
            r = json.loads(line)
            if r.get("created_at"):
                r["created_at"] = r["created_at"].replace(" ", "T").rstrip("Z") + "Z"
                if random.random() < 0.3:
                    when = datetime.datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))
                    r["created_at"] = int(when.timestamp() * 1000)
            phone = r.get("phone")
            if phone and phone.isdigit() and random.random() < 0.5:
                r["phone"] = int(phone)
            r = {k: v for k, v in r.items() if v is not None}
            out.write(json.dumps(r) + "\n")
db.execute(
    f"""copy (select order_id, account_id, cast(order_ts as timestamp) order_ts, cast(amount_eur as double) amount_eur,
        category, cast(items as integer) items from '{src}/webshop/orders*.parquet') to '{dst}/webshop/orders.parquet'"""
)

# POS: one file each; a fifth of the till amounts with a decimal comma (quoted).
db.execute(f"copy (select * from read_csv('{src}/pos/loyalty_cards*.csv', all_varchar=true)) to '{dst}/pos/loyalty_cards.csv' (header)")
rows = db.execute(f"select * from read_csv('{src}/pos/transactions*.csv', all_varchar=true)").fetchall()
cols = [d[0] for d in db.description]
at = cols.index("amount_eur")
with open(f"{dst}/pos/transactions.csv", "w") as out:
    out.write(",".join(cols) + "\n")
    for row in rows:
        fields = ["" if v is None else v for v in row]
        if random.random() < 0.2:
            fields[at] = '"' + fields[at].replace(".", ",") + '"'
        out.write(",".join(fields) + "\n")

# Service: timestamps with a +01:00 offset, satisfaction scores sometimes as strings.
with open(f"{dst}/service/tickets.jsonl", "w") as out:
    for path in sorted(glob.glob(f"{src}/service/tickets*.jsonl")):
        for line in open(path):
            r = json.loads(line)
            if r.get("opened_at"):
                r["opened_at"] = r["opened_at"].replace("Z", "").replace(" ", "T")[:19] + "+01:00"
            if r.get("csat") is not None and random.random() < 0.3:
                r["csat"] = str(r["csat"])
            out.write(json.dumps(r) + "\n")

for name in ["subscribers", "events"]:
    db.execute(f"copy (select * from read_csv('{src}/email/{name}*.csv', all_varchar=true)) to '{dst}/email/{name}.csv' (header)")
db.execute(f"copy (select * from '{src}/web/sessions*.parquet') to '{dst}/web/sessions.parquet'")
