//! Writes a world as the six systems' dumps in the layout of SOURCES.md, and the truth.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use chrono::{Duration, NaiveDateTime};
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use super::names::{CATEGORIES, LANDING_PAGES};
use super::world::World;

pub type IoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn create(path: &Path) -> IoResult<BufWriter<File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(BufWriter::with_capacity(1 << 20, File::create(path)?))
}

fn csv_writer(path: &Path, delimiter: u8) -> IoResult<csv::Writer<BufWriter<File>>> {
    Ok(csv::WriterBuilder::new().delimiter(delimiter).from_writer(create(path)?))
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

/// A generator for one record's facts that does not depend on any other record, so that
/// unchanged records have the same facts on day two.
fn record_rng(seed: u64, system: u64, key: &str) -> ChaCha8Rng {
    let n: u64 = key.chars().filter(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0);
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(system << 40).wrapping_add(n))
}

fn parse_ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap_or_default()
}

fn parquet_writer(path: &Path, schema: Arc<Schema>) -> IoResult<ArrowWriter<File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build();
    Ok(ArrowWriter::try_new(File::create(path)?, schema, Some(props))?)
}

fn utc_ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Writes every system's dump under `dumps` and the truth under `truth_dir`.
pub fn write_world(w: &World, seed: u64, dumps: &Path, truth_dir: &Path) -> IoResult<()> {
    write_crm(w, dumps)?;
    write_webshop(w, seed, dumps)?;
    write_pos(w, seed, dumps)?;
    write_service(w, dumps)?;
    write_email(w, seed, dumps)?;
    write_web(w, seed, dumps)?;
    write_truth(w, truth_dir)?;
    Ok(())
}

const CRM_COLUMNS: [&str; 12] = [
    "klant_id",
    "voornaam",
    "tussenvoegsel",
    "achternaam",
    "email",
    "telefoon",
    "straat",
    "huisnummer",
    "postcode",
    "woonplaats",
    "geboortedatum",
    "gewijzigd_op",
];

fn write_crm(w: &World, dumps: &Path) -> IoResult<()> {
    // Two files; the second has its columns in another order, as exports do.
    let half = w.crm.len().div_ceil(2);
    for (part, rows) in w.crm.chunks(half.max(1)).enumerate() {
        let mut order: Vec<usize> = (0..CRM_COLUMNS.len()).collect();
        if part == 1 {
            order.reverse();
        }
        let mut out = csv_writer(&dumps.join(format!("crm/contacts_{}.csv", part + 1)), b';')?;
        out.write_record(order.iter().map(|i| CRM_COLUMNS[*i]))?;
        for r in rows {
            let values = [
                r.klant_id.as_str(),
                opt(&r.voornaam),
                opt(&r.tussenvoegsel),
                opt(&r.achternaam),
                opt(&r.email),
                opt(&r.telefoon),
                opt(&r.straat),
                opt(&r.huisnummer),
                opt(&r.postcode),
                opt(&r.woonplaats),
                opt(&r.geboortedatum),
                r.gewijzigd_op.as_str(),
            ];
            out.write_record(order.iter().map(|i| values[*i]))?;
        }
        out.flush()?;
    }
    Ok(())
}

fn write_jsonl(path: &Path, rows: impl Iterator<Item = Map<String, Value>>) -> IoResult<()> {
    let mut out = create(path)?;
    for row in rows {
        serde_json::to_writer(&mut out, &row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// A JSON object where missing values are sometimes absent and sometimes `null`.
fn object(pairs: Vec<(&str, Option<Value>)>, drop_nulls: bool) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter(|(_, v)| v.is_some() || !drop_nulls)
        .map(|(k, v)| (k.to_string(), v.unwrap_or(Value::Null)))
        .collect()
}

fn write_webshop(w: &World, seed: u64, dumps: &Path) -> IoResult<()> {
    write_jsonl(
        &dumps.join("webshop/accounts_1.jsonl"),
        w.accounts.iter().enumerate().map(|(i, a)| {
            object(
                vec![
                    ("account_id", Some(json!(a.account_id))),
                    ("email", Some(json!(a.email))),
                    ("first_name", a.first_name.as_ref().map(|v| json!(v))),
                    ("last_name", a.last_name.as_ref().map(|v| json!(v))),
                    ("phone", a.phone.as_ref().map(|v| json!(v))),
                    ("created_at", Some(json!(format!("{}Z", a.created_at)))),
                    ("newsletter_optin", Some(json!(a.newsletter_optin))),
                ],
                i % 2 == 0,
            )
        }),
    )?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("account_id", DataType::Utf8, false),
        Field::new("order_ts", utc_ts(), false),
        Field::new("amount_eur", DataType::Decimal128(12, 2), false),
        Field::new("category", DataType::Utf8, true),
        Field::new("items", DataType::Int64, false),
    ]));
    let mut writer = parquet_writer(&dumps.join("webshop/orders_1.parquet"), schema.clone())?;
    let (mut id, mut acc, mut ts, mut amount, mut cat, mut items) = (
        StringBuilder::new(),
        StringBuilder::new(),
        TimestampMicrosecondBuilder::new().with_timezone("UTC"),
        Decimal128Builder::new().with_precision_and_scale(12, 2)?,
        StringBuilder::new(),
        Int64Builder::new(),
    );
    let mut n = 0u64;
    for a in &w.accounts {
        let mut rng = record_rng(seed, 1, &a.account_id);
        let orders = if rng.random_bool(0.25) { 0 } else { rng.random_range(1..16) };
        let created = parse_ts(&a.created_at);
        let span = (w.as_of.and_hms_opt(0, 0, 0).expect("t") - created).num_seconds().max(1);
        let favourite = *CATEGORIES.choose(&mut rng).expect("c");
        for _ in 0..orders {
            n += 1;
            id.append_value(format!("O{}{:03}", &a.account_id[1..], n % 1000));
            acc.append_value(&a.account_id);
            ts.append_value((created + Duration::seconds(rng.random_range(0..span))).and_utc().timestamp_micros());
            let cents = rng.random_range(500..25_000i128);
            amount.append_value(if refunded(&mut rng, w) { -cents } else { cents });
            cat.append_value(if rng.random_bool(0.6) { favourite } else { CATEGORIES.choose(&mut rng).expect("c") });
            items.append_value(rng.random_range(1..6));
        }
        if id.len() >= 65_536 {
            flush_orders(&mut writer, &schema, [&mut id, &mut acc], &mut ts, &mut amount, &mut cat, &mut items)?;
        }
    }
    flush_orders(&mut writer, &schema, [&mut id, &mut acc], &mut ts, &mut amount, &mut cat, &mut items)?;
    writer.close()?;
    Ok(())
}

fn flush_orders(
    writer: &mut ArrowWriter<File>,
    schema: &Arc<Schema>,
    [id, acc]: [&mut StringBuilder; 2],
    ts: &mut TimestampMicrosecondBuilder,
    amount: &mut Decimal128Builder,
    cat: &mut StringBuilder,
    items: &mut Int64Builder,
) -> IoResult<()> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(acc.finish()),
        Arc::new(ts.finish()),
        Arc::new(amount.finish()),
        Arc::new(cat.finish()),
        Arc::new(items.finish()),
    ];
    writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    Ok(())
}

/// Whether a transaction is a refund, under the noise profile (no draw when none are).
fn refunded(rng: &mut ChaCha8Rng, w: &World) -> bool {
    w.profile.refunds() > 0.0 && rng.random_bool(w.profile.refunds())
}

fn write_pos(w: &World, seed: u64, dumps: &Path) -> IoResult<()> {
    let mut cards = csv_writer(&dumps.join("pos/loyalty_cards.csv"), b',')?;
    cards.write_record(["card_number", "full_name", "postcode", "phone", "enrolled_on"])?;
    let mut tx = csv_writer(&dumps.join("pos/transactions.csv"), b',')?;
    tx.write_record(["card_number", "store_id", "ts", "amount_eur"])?;
    for c in &w.cards {
        cards.write_record([
            c.card_number.as_str(),
            opt(&c.full_name),
            opt(&c.postcode),
            opt(&c.phone),
            &c.enrolled_on,
        ])?;
        let mut rng = record_rng(seed, 2, &c.card_number);
        let store = format!("W{:03}", rng.random_range(1..60));
        let enrolled = parse_ts(&format!("{}T09:00:00", c.enrolled_on));
        let span = (w.as_of.and_hms_opt(0, 0, 0).expect("t") - enrolled).num_seconds().max(1);
        let count = if rng.random_bool(0.2) { 0 } else { rng.random_range(1..30) };
        for _ in 0..count {
            let t = enrolled + Duration::seconds(rng.random_range(0..span));
            let cents: i64 = rng.random_range(150..12_000);
            let cents = if refunded(&mut rng, w) { -cents } else { cents };
            tx.write_record([
                c.card_number.as_str(),
                &store,
                &t.format("%Y-%m-%d %H:%M:%S").to_string(),
                &format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100),
            ])?;
        }
    }
    cards.flush()?;
    tx.flush()?;
    Ok(())
}

fn write_service(w: &World, dumps: &Path) -> IoResult<()> {
    write_jsonl(
        &dumps.join("service/tickets.jsonl"),
        w.tickets.iter().enumerate().map(|(i, t)| {
            object(
                vec![
                    ("ticket_id", Some(json!(t.ticket_id))),
                    ("caller_name", t.caller_name.as_ref().map(|v| json!(v))),
                    ("caller_email", t.caller_email.as_ref().map(|v| json!(v))),
                    ("caller_phone", t.caller_phone.as_ref().map(|v| json!(v))),
                    ("opened_at", Some(json!(format!("{}+01:00", t.opened_at)))),
                    ("topic", Some(json!(t.topic))),
                    ("csat", t.csat.map(|v| json!(v))),
                ],
                i % 3 == 0,
            )
        }),
    )
}

fn write_email(w: &World, seed: u64, dumps: &Path) -> IoResult<()> {
    let mut subs = csv_writer(&dumps.join("email/subscribers.csv"), b',')?;
    subs.write_record(["subscriber_id", "email", "first_name", "subscribed_at"])?;
    let mut events = csv_writer(&dumps.join("email/events.csv"), b',')?;
    events.write_record(["subscriber_id", "campaign_id", "event", "ts"])?;
    let first_campaign = w.as_of - Duration::days(7 * 20);
    for s in &w.subscribers {
        subs.write_record([s.subscriber_id.as_str(), &s.email, opt(&s.first_name), &s.subscribed_at])?;
        let mut rng = record_rng(seed, 3, &s.subscriber_id);
        let engagement: f64 = rng.random::<f64>().powi(2);
        let subscribed = parse_ts(&s.subscribed_at);
        for week in 0..20 {
            let sent = (first_campaign + Duration::days(7 * week)).and_hms_opt(8, 0, 0).expect("t");
            if sent < subscribed {
                continue;
            }
            let campaign = format!("CMP{:03}", week + 1);
            let mut event = |kind: &str, at: NaiveDateTime| {
                events.write_record([
                    s.subscriber_id.as_str(),
                    &campaign,
                    kind,
                    &at.format("%Y-%m-%dT%H:%M:%S").to_string(),
                ])
            };
            event("sent", sent)?;
            if rng.random_bool(engagement * 0.8) {
                let opened = sent + Duration::minutes(rng.random_range(5..3000));
                event("open", opened)?;
                if rng.random_bool(0.35) {
                    event("click", opened + Duration::minutes(rng.random_range(1..30)))?;
                }
            }
            if rng.random_bool(0.004) {
                event("unsubscribe", sent + Duration::hours(rng.random_range(1..48)))?;
                break;
            }
        }
    }
    subs.flush()?;
    events.flush()?;
    Ok(())
}

fn write_web(w: &World, seed: u64, dumps: &Path) -> IoResult<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("session_id", DataType::Utf8, false),
        Field::new("cookie_id", DataType::Utf8, false),
        Field::new("logged_in_account_id", DataType::Utf8, true),
        Field::new("started_at", utc_ts(), false),
        Field::new("pageviews", DataType::Int64, false),
        Field::new("landing_page", DataType::Utf8, true),
        Field::new("viewed_category", DataType::Utf8, true),
        Field::new("downloaded_brochure", DataType::Boolean, false),
        Field::new("requested_demo", DataType::Boolean, false),
    ]));
    let mut writer = parquet_writer(&dumps.join("web/sessions.parquet"), schema.clone())?;
    let mut b = SessionBuilders::default();
    let mut n = 0u64;
    for a in &w.accounts {
        let mut rng = record_rng(seed, 4, &a.account_id);
        let cookie = format!("ck{:012x}", rng.random::<u64>() >> 16);
        let sessions = rng.random_range(0..20);
        for i in 0..sessions {
            n += 1;
            let logged_in = rng.random_bool(0.7).then_some(a.account_id.as_str());
            let days_ago = rng.random_range(0..400);
            b.push(&mut rng, &format!("W{}{:03}", &a.account_id[1..], i), &cookie, logged_in, w.as_of, days_ago);
        }
        // Anonymous visitors.
        for i in 0..rng.random_range(0..3) {
            n += 1;
            let c = format!("ck{:012x}", rng.random::<u64>() >> 16);
            let days_ago = rng.random_range(0..400);
            b.push(&mut rng, &format!("X{}{:03}", &a.account_id[1..], i), &c, None, w.as_of, days_ago);
        }
        if b.len() >= 65_536 {
            writer.write(&b.finish(&schema)?)?;
        }
    }
    writer.write(&b.finish(&schema)?)?;
    writer.close()?;
    let _ = n;
    Ok(())
}

#[derive(Default)]
struct SessionBuilders {
    id: StringBuilder,
    cookie: StringBuilder,
    account: StringBuilder,
    started: Vec<i64>,
    pageviews: Int64Builder,
    landing: StringBuilder,
    category: StringBuilder,
    brochure: BooleanBuilder,
    demo: BooleanBuilder,
}

impl SessionBuilders {
    fn len(&self) -> usize {
        self.started.len()
    }

    fn push(
        &mut self,
        rng: &mut ChaCha8Rng,
        id: &str,
        cookie: &str,
        account: Option<&str>,
        as_of: chrono::NaiveDate,
        days_ago: i64,
    ) {
        let t = as_of.and_hms_opt(0, 0, 0).expect("t") - Duration::days(days_ago)
            + Duration::seconds(rng.random_range(0..86_400));
        self.id.append_value(id);
        self.cookie.append_value(cookie);
        self.account.append_option(account);
        self.started.push(t.and_utc().timestamp_micros());
        self.pageviews.append_value(rng.random_range(1..25));
        self.landing.append_value(LANDING_PAGES.choose(rng).expect("p"));
        self.category.append_option(rng.random_bool(0.7).then(|| *CATEGORIES.choose(rng).expect("c")));
        self.brochure.append_value(rng.random_bool(0.03));
        self.demo.append_value(rng.random_bool(0.01));
    }

    fn finish(&mut self, schema: &Arc<Schema>) -> IoResult<RecordBatch> {
        let mut ts = TimestampMicrosecondBuilder::with_capacity(self.started.len()).with_timezone("UTC");
        ts.append_slice(&self.started);
        self.started.clear();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.cookie.finish()),
            Arc::new(self.account.finish()),
            Arc::new(ts.finish()),
            Arc::new(self.pageviews.finish()),
            Arc::new(self.landing.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.brochure.finish()),
            Arc::new(self.demo.finish()),
        ];
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

fn write_truth(w: &World, dir: &Path) -> IoResult<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("source_system", DataType::Utf8, false),
        Field::new("source_record_id", DataType::Utf8, false),
        Field::new("person_id", DataType::Utf8, false),
    ]));
    let mut writer = parquet_writer(&dir.join("truth.parquet"), schema.clone())?;
    let (mut sys, mut id, mut person) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut add = |s: &str, k: &str, p: u32| {
        sys.append_value(s);
        id.append_value(k);
        person.append_value(format!("P{p:08}"));
    };
    for r in &w.crm {
        add("crm", &r.klant_id, r.person);
    }
    for r in &w.accounts {
        add("webshop", &r.account_id, r.person);
    }
    for r in &w.cards {
        add("pos", &r.card_number, r.person);
    }
    for r in &w.tickets {
        add("service", &r.ticket_id, r.person);
    }
    for r in &w.subscribers {
        add("email", &r.subscriber_id, r.person);
    }
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(sys.finish()), Arc::new(id.finish()), Arc::new(person.finish())])?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}
