//! NDJSON sources: every line parsed once to find bad records and the value kinds of each
//! key; keys whose kinds disagree between records (a phone as number here, as text there)
//! are read as text, through a rewritten copy when needed.

use std::collections::HashSet;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::{DataFrame, SessionContext};
use indexmap::IndexMap;
use object_store::ObjectMeta;
use serde_json::Value;

use super::lint::{self, BadRow, FileReport, Reader, RejectedRows, TextFormat};
use super::{ExtractError, SourceCtx, apply_declared, declared_types, listing_frame};
use crate::config::BadRowPolicy;

/// JSON kinds seen for one key, as bits.
const STR: u8 = 1;
const INT: u8 = 2;
const FLOAT: u8 = 4;
const BOOL: u8 = 8;
const NESTED: u8 = 16;

fn kind(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::String(_) => STR,
        Value::Number(n) if n.is_i64() || n.is_u64() => INT,
        Value::Number(_) => FLOAT,
        Value::Bool(_) => BOOL,
        _ => NESTED,
    }
}

/// The Arrow type a key is read as, from the kinds seen.
fn column_type(kinds: u8) -> DataType {
    match kinds {
        INT => DataType::Int64,
        k if k & !(INT | FLOAT) == 0 && k != 0 => DataType::Float64,
        BOOL => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

/// The type a declared column is read as: its own JSON-native type when every value has
/// the matching JSON kind (numbers for numbers, booleans for booleans), else text, which
/// the declared type's parser then reads.
fn declared_read_type(declared: &DataType, kinds: u8) -> DataType {
    let native = match declared {
        DataType::Int64 => DataType::Int64,
        DataType::Float64 | DataType::Decimal128(_, _) => DataType::Float64,
        DataType::Boolean => DataType::Boolean,
        _ => DataType::Utf8,
    };
    if readable(kinds, &native) { native } else { DataType::Utf8 }
}

/// Whether DataFusion reads these kinds into the type without help.
fn readable(kinds: u8, t: &DataType) -> bool {
    let allowed = match t {
        DataType::Utf8 => STR,
        DataType::Int64 => INT,
        DataType::Float64 => INT | FLOAT,
        DataType::Boolean => BOOL,
        _ => 0,
    };
    kinds & !allowed == 0
}

/// One NDJSON source as the text driver checks and copies it.
#[derive(Debug, Clone)]
struct Ndjson {
    key: Option<String>,
    declared: Vec<(String, DataType)>,
    stop_at_first_bad: bool,
    limit: Option<usize>,
    /// The type each key is read as, settled over all files once they are checked.
    types: IndexMap<String, DataType>,
}

/// The JSON kinds of each key seen in one file.
type Kinds = IndexMap<String, u8>;

impl TextFormat for Ndjson {
    type Found = Kinds;

    fn check(&self, url: &str, reader: Reader) -> Result<FileReport<Kinds>, String> {
        check_file(reader, self, url)
    }

    /// One schema for the whole source: JSON is read by key, so files agree by name.
    fn settle(&mut self, reports: &[FileReport<Kinds>]) {
        let mut kinds = Kinds::new();
        for r in reports {
            for (k, v) in &r.found {
                *kinds.entry(k.clone()).or_default() |= v;
            }
        }
        self.types = kinds
            .iter()
            .map(|(k, v)| {
                let t = match self.declared.iter().find(|(c, _)| c == k) {
                    Some((_, d)) => declared_read_type(d, *v),
                    None => column_type(*v),
                };
                (k.clone(), t)
            })
            .collect();
    }

    fn needs_rewrite(&self, found: &Kinds) -> bool {
        found.iter().any(|(k, v)| !readable(*v, &self.types[k]))
    }

    fn write_copy(&self, reader: Reader, skip: &HashSet<u64>, dest: &Path) -> std::io::Result<()> {
        write_copy(reader, skip, &self.types, self.limit, dest)
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn check_file(reader: Box<dyn Read + Send>, checks: &Ndjson, url: &str) -> Result<FileReport<Kinds>, String> {
    let mut report = FileReport::<Kinds>::default();
    let mut reader = std::io::BufReader::new(reader);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reason = match serde_json::from_slice::<serde_json::Map<String, Value>>(&buf) {
            Err(e) if std::str::from_utf8(&buf).is_err() => Some(format!("invalid UTF-8 ({e})")),
            Err(e) => Some(format!("invalid JSON: {e}")),
            Ok(map) => match checks.key.as_ref().map(|k| (k, map.get(k).and_then(value_text))) {
                Some((k, None)) => Some(format!("missing key `{k}`")),
                Some((k, Some(v))) if v.trim().is_empty() => Some(format!("empty key `{k}`")),
                _ => {
                    let wrong = checks.declared.iter().find_map(|(c, t)| {
                        let v = map.get(c).and_then(value_text)?;
                        (!lint::fits(&v, t)).then(|| format!("key `{c}`: `{v}` is not a valid {t}"))
                    });
                    if wrong.is_none() {
                        for (k, v) in &map {
                            *report.found.entry(k.clone()).or_default() |= kind(v);
                        }
                    }
                    wrong
                }
            },
        };
        match reason {
            Some(reason) => {
                report.bad.push(BadRow { file: url.to_string(), line: line_no, reason, record: lint::lossy(&buf) });
                if checks.stop_at_first_bad {
                    break;
                }
            }
            None => {
                report.rows += 1;
                if checks.limit.is_some_and(|n| report.rows as usize >= n) {
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// Writes the good lines with every value turned into what its column's type reads.
fn write_copy(
    reader: Box<dyn Read + Send>,
    skip_lines: &HashSet<u64>,
    types: &IndexMap<String, DataType>,
    limit: Option<usize>,
    dest: &std::path::Path,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(lint::create_copy(dest)?);
    let mut reader = std::io::BufReader::new(reader);
    let mut buf = Vec::new();
    let (mut line_no, mut written) = (0u64, 0usize);
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no += 1;
        if skip_lines.contains(&line_no) || buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut map: serde_json::Map<String, Value> = serde_json::from_slice(&buf).map_err(std::io::Error::other)?;
        for (k, v) in map.iter_mut() {
            if types.get(k) == Some(&DataType::Utf8) && !matches!(v, Value::String(_) | Value::Null) {
                *v = Value::String(v.to_string());
            }
        }
        serde_json::to_writer(&mut out, &map)?;
        out.write_all(b"\n")?;
        written += 1;
        if limit.is_some_and(|n| written >= n) {
            break;
        }
    }
    out.flush()
}

pub(super) async fn read(
    ctx: &SessionContext,
    src: &SourceCtx<'_>,
    files: &[(ObjectMeta, String)],
    rejected: &mut RejectedRows,
) -> Result<(Option<DataFrame>, Vec<String>, u64), ExtractError> {
    let declared = declared_types(src.spec);
    let format = Ndjson {
        key: src.spec.key.clone(),
        declared: declared.clone(),
        stop_at_first_bad: src.spec.on_bad_rows == BadRowPolicy::Fail,
        limit: src.limit,
        types: IndexMap::new(),
    };
    let (format, checked) = lint::check_and_copy(format, src, files, rejected).await?;
    let rows: u64 = checked.iter().map(|f| f.report.rows).sum();
    let urls: Vec<String> = checked.into_iter().filter(|f| f.report.rows > 0).filter_map(|f| f.read_url).collect();
    if urls.is_empty() {
        return Ok((None, Vec::new(), 0));
    }
    let types = format.types;
    let schema = Arc::new(Schema::new(types.iter().map(|(k, t)| Field::new(k, t.clone(), true)).collect::<Vec<_>>()));
    let options = ListingOptions::new(Arc::new(JsonFormat::default())).with_file_extension("");
    let df = listing_frame(ctx, src.name, &urls, options, schema).await?;
    let df = apply_declared(src.name, df, &declared)?;
    Ok((Some(df), types.keys().cloned().collect(), rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> FileReport<Kinds> {
        let checks = Ndjson {
            key: Some("id".into()),
            declared: vec![("csat".into(), DataType::Int64)],
            stop_at_first_bad: false,
            limit: None,
            types: IndexMap::new(),
        };
        check_file(Box::new(std::io::Cursor::new(text.as_bytes().to_vec())), &checks, "file:///t.jsonl").unwrap()
    }

    #[test]
    fn kinds_and_bad_lines() {
        let r = run(
            "{\"id\":\"a\",\"phone\":612345678}\n\n{\"id\":\"b\",\"phone\":\"06-1\"}\n{\"id\":\"c\",\n{\"phone\":\"x\"}\n{\"id\":\"d\",\"csat\":\"vijf\"}\n",
        );
        assert_eq!(r.rows, 2);
        assert_eq!(r.found["phone"], INT | STR);
        let lines: Vec<u64> = r.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [4, 5, 6]);
        assert!(r.bad[0].reason.starts_with("invalid JSON"));
        assert_eq!(r.bad[1].reason, "missing key `id`");
        assert!(r.bad[2].reason.contains("`vijf` is not a valid"));
    }

    #[test]
    fn declared_columns_read_natively_when_they_can() {
        assert_eq!(declared_read_type(&DataType::Int64, INT), DataType::Int64);
        assert_eq!(declared_read_type(&DataType::Int64, INT | STR), DataType::Utf8);
        assert_eq!(declared_read_type(&DataType::Decimal128(18, 2), INT | FLOAT), DataType::Float64);
        assert_eq!(declared_read_type(&DataType::Boolean, BOOL), DataType::Boolean);
        assert_eq!(declared_read_type(&DataType::Date32, STR), DataType::Utf8);
    }

    #[test]
    fn types_from_kinds() {
        assert_eq!(column_type(INT), DataType::Int64);
        assert_eq!(column_type(INT | FLOAT), DataType::Float64);
        assert_eq!(column_type(INT | STR), DataType::Utf8);
        assert_eq!(column_type(NESTED), DataType::Utf8);
        assert!(!readable(INT | STR, &DataType::Utf8));
        assert!(readable(INT, &DataType::Float64));
    }
}
