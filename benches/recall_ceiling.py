"""How much recall the data allows: for each person of the truth, link their records only
where two of them share evidence and count the same-person pairs that this joins,
transitively. No matcher that relies on that evidence can recall more. Four kinds of
evidence: hard (normalised e-mail, phone, or postcode + surname), hard plus an exact full
name, the robustness matrix's ceiling (an identifier, or surname + first name or
initial), and that ceiling with only the name keys that one person holds in the whole data
(a key several people share cannot tell them apart).

usage: python recall_ceiling.py DATA_DIR [--json]   (the folder with dumps/ and truth/)
"""

import collections
import json
import re
import sys

import duckdb

data = sys.argv[1]
d = f"{data}/dumps"
con = duckdb.connect()
rows = con.execute(f"""
WITH recs AS (
  SELECT 'crm' s, klant_id r, concat_ws(' ', voornaam, tussenvoegsel, achternaam) name, email, telefoon phone, postcode
  FROM read_csv('{d}/crm/*.csv', delim=';', header=true, all_varchar=true, union_by_name=true)
  UNION ALL SELECT 'webshop', CAST(account_id AS VARCHAR), concat_ws(' ', first_name, last_name), email,
         CAST(phone AS VARCHAR), NULL
  FROM read_json('{d}/webshop/accounts*.jsonl', format='newline_delimited', union_by_name=true)
  UNION ALL SELECT 'pos', card_number, full_name, NULL, phone, postcode
  FROM read_csv('{d}/pos/loyalty_cards*.csv', header=true, all_varchar=true)
  UNION ALL SELECT 'service', CAST(ticket_id AS VARCHAR), caller_name, caller_email, CAST(caller_phone AS VARCHAR), NULL
  FROM read_json('{d}/service/tickets*.jsonl', format='newline_delimited', union_by_name=true)
  UNION ALL SELECT 'email', subscriber_id, first_name, email, NULL, NULL
  FROM read_csv('{d}/email/subscribers*.csv', header=true, all_varchar=true)
)
SELECT t.person_id, recs.name, recs.email, recs.phone, recs.postcode
FROM read_parquet('{data}/truth/truth.parquet') t
JOIN recs ON recs.s = t.source_system AND recs.r = t.source_record_id
""").fetchall()

PARTICLES = {"van", "de", "der", "den", "het", "'t", "ter", "ten", "dhr.", "mevr."}


def email(e):
    e = (e or "").strip().lower()
    if "@" not in e:
        return None
    local, domain = e.split("@", 1)
    local = local.split("+")[0]
    return (local.replace(".", "") if domain == "gmail.com" else local) + "@" + domain


def phone(p):
    digits = re.sub(r"\D", "", p or "")
    return digits[-9:] if len(digits) >= 9 else None


def words(n):
    return (n or "").lower().replace(",", " ").split()


def surname(n):
    w = [x for x in words(n) if x not in PARTICLES and not x.endswith(".")]
    return w[-1] if len(w) > 1 or (w and len(words(n)) > 1) else None


def full_name(n):
    w = words(n)
    if len(w) < 2 or w[0].endswith(".") or w[0] in PARTICLES:
        return None
    return (w[0], surname(n))


def name_initial(n):
    w = [x for x in words(n) if x not in PARTICLES]
    if len(w) < 2:
        return None
    return (w[0][0], surname(n))


def reachable_pairs(records, evidence_kind):
    parent = list(range(len(records)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    keys = collections.defaultdict(list)
    for i, (name, mail, tel, pc) in enumerate(records):
        evidence = [("e", email(mail)), ("p", phone(tel))]
        if pc and surname(name):
            evidence.append(("np", (re.sub(r"\s", "", pc).upper(), surname(name))))
        if evidence_kind == "names":
            evidence.append(("n", full_name(name)))
        if evidence_kind in ("initial", "unique"):
            key = name_initial(name)
            if evidence_kind == "unique" and len(holders.get(key, ())) > 1:
                key = None
            evidence = evidence[:2] + [("i", key)]
        for key in evidence:
            if key[1]:
                keys[key].append(i)
    for ids in keys.values():
        for i in ids[1:]:
            parent[find(i)] = find(ids[0])
    sizes = collections.Counter(find(i) for i in range(len(records)))
    return sum(n * (n - 1) // 2 for n in sizes.values())


people = collections.defaultdict(list)
for person, *record in rows:
    people[person].append(record)
total = sum(len(r) * (len(r) - 1) // 2 for r in people.values())
holders = collections.defaultdict(set)
for person, records in people.items():
    for name, *_ in records:
        holders[name_initial(name)].add(person)
kinds = {
    "hard": "e-mail, phone, postcode + surname",
    "names": "... and exact full name",
    "initial": "identifier, or surname + first name or initial",
    "unique": "... with only the name keys one person holds",
}
ceilings = {}
for kind, label in kinds.items():
    reach = sum(reachable_pairs(r, kind) for r in people.values())
    ceilings[kind] = reach / total
    if "--json" not in sys.argv:
        print(f"recall ceiling ({label}): {reach / total:.4f}  ({reach} of {total} same-person pairs)")
if "--json" in sys.argv:
    print(json.dumps(ceilings))
