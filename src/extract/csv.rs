//! CSV sources: headers read per file (column order may differ between files), every row
//! checked, all columns read as text and typed afterwards.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::{DataFrame, SessionContext};
use indexmap::IndexMap;
use object_store::ObjectMeta;

use super::lint::{self, BadRow, CheckedFile, FileReport, Reader, RejectedRows, TextFormat};
use super::{ExtractError, SourceCtx, apply_declared, declared_types, listing_frame, text_schema, union_by_name};
use crate::config::{BadRowPolicy, FormatSpec};

/// The dialect of one CSV source.
#[derive(Debug, Clone)]
struct Dialect {
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    header: bool,
}

impl Dialect {
    fn from_spec(spec: &FormatSpec) -> Dialect {
        match spec {
            FormatSpec::Csv { delimiter, header, quote, escape } => Dialect {
                delimiter: *delimiter as u8,
                quote: *quote as u8,
                escape: escape.map(|c| c as u8),
                header: *header,
            },
            _ => unreachable!("csv reader called for another format"),
        }
    }

    fn reader<R: Read>(&self, r: R) -> ::csv::Reader<R> {
        ::csv::ReaderBuilder::new()
            .delimiter(self.delimiter)
            .quote(self.quote)
            .escape(self.escape)
            .double_quote(self.escape.is_none())
            .has_headers(false)
            .flexible(true)
            .from_reader(r)
    }
}

/// What checking one file found besides its rows.
#[derive(Debug, Default)]
struct Header {
    columns: Vec<String>,
    /// Rows with trailing empty fields beyond the header, to be trimmed in a copy.
    repaired: u64,
    multiline: bool,
}

/// One CSV source as the text driver checks and copies it.
#[derive(Debug, Clone)]
struct Csv {
    dialect: Dialect,
    key: Option<String>,
    declared: Vec<(String, DataType)>,
    stop_at_first_bad: bool,
    limit: Option<usize>,
}

/// Column names from a header row: BOM and spaces stripped, lower case, unnamed columns
/// numbered.
fn header_names(record: &::csv::ByteRecord) -> Vec<String> {
    record
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let name = String::from_utf8_lossy(raw).trim_start_matches('\u{feff}').trim().to_lowercase();
            if name.is_empty() { format!("column_{}", i + 1) } else { name }
        })
        .collect()
}

impl TextFormat for Csv {
    type Found = Header;

    fn check(&self, url: &str, reader: Reader) -> Result<FileReport<Header>, String> {
        check_file(reader, self, url)
    }

    fn needs_rewrite(&self, found: &Header) -> bool {
        found.repaired > 0
    }

    fn write_copy(&self, reader: Reader, skip: &HashSet<u64>, dest: &Path) -> std::io::Result<()> {
        write_clean_copy(reader, self, skip, dest)
    }
}

fn check_file(reader: Box<dyn Read + Send>, checks: &Csv, url: &str) -> Result<FileReport<Header>, String> {
    let mut csv = checks.dialect.reader(reader);
    let mut record = ::csv::ByteRecord::new();
    let mut report = FileReport::<Header>::default();
    let bad = |line: u64, reason: String, record: &::csv::ByteRecord, delimiter: u8| BadRow {
        file: url.to_string(),
        line,
        reason,
        record: lint::lossy(&record.iter().collect::<Vec<_>>().join(&delimiter)),
    };
    // The header row, or numbered columns when the file has none.
    let mut first_data: Option<::csv::ByteRecord> = None;
    match csv.read_byte_record(&mut record) {
        Ok(true) if checks.dialect.header => report.found.columns = header_names(&record),
        Ok(true) => {
            report.found.columns = (1..=record.len()).map(|i| format!("column_{i}")).collect();
            first_data = Some(record.clone());
        }
        Ok(false) => {
            report.bad.push(BadRow {
                file: url.to_string(),
                line: 0,
                reason: "file has no header and no rows".into(),
                record: String::new(),
            });
            return Ok(report);
        }
        Err(e) => return Err(format!("cannot read the header: {e}")),
    }
    let mut seen = HashSet::new();
    let columns = &report.found.columns;
    if let Some(dup) = columns.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(format!("column `{dup}` appears twice in the header"));
    }
    let width = columns.len();
    let key_at = checks.key.as_ref().and_then(|k| columns.iter().position(|c| c == k));
    // A file without the key column would give all its rows one empty key.
    if let (Some(key), None) = (&checks.key, key_at) {
        return Err(format!(
            "the header has no key column `{key}`{} (columns: {})",
            crate::config::suggest(key, columns.iter().map(String::as_str)),
            columns.join(", ")
        ));
    }
    let typed: Vec<(usize, &DataType, &str)> = checks
        .declared
        .iter()
        .filter_map(|(c, t)| columns.iter().position(|h| h == c).map(|i| (i, t, c.as_str())))
        .collect();
    let mut pending = first_data;
    loop {
        // Each row is read into the one record buffer: no allocation per row.
        match pending.take() {
            Some(r) => record = r,
            None => match csv.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    report.bad.push(BadRow {
                        file: url.to_string(),
                        line,
                        reason: e.to_string(),
                        record: String::new(),
                    });
                    break;
                }
            },
        }
        let row = &record;
        let (line, end_line) = (row.position().map_or(0, |p| p.line()), csv.position().line());
        let spans_lines = end_line > line + 1 || row.iter().any(|f| f.contains(&b'\n'));
        // The row's fields end to end, checked once: each typed field is a slice of it.
        let text = std::str::from_utf8(row.as_slice());
        let reason = if text.is_err() {
            Some("invalid UTF-8 (is the file Latin-1 or Windows-1252 encoded?)".to_string())
        } else if row.len() < width || (row.len() > width && row.iter().skip(width).any(|f| !f.is_empty())) {
            Some(if spans_lines && row.len() < width {
                "unterminated quote: the row runs on past its line".to_string()
            } else {
                format!("row has {} fields, the header has {width}", row.len())
            })
        } else if key_at.is_some_and(|k| row.get(k).is_none_or(|v| v.iter().all(u8::is_ascii_whitespace))) {
            Some(format!("empty key `{}`", checks.key.as_deref().unwrap_or_default()))
        } else {
            typed.iter().find_map(|(i, t, c)| {
                let v = row.range(*i).and_then(|r| text.ok()?.get(r)).unwrap_or_default();
                (!lint::fits(v, t)).then(|| format!("column `{c}`: `{v}` is not a valid {t}"))
            })
        };
        match reason {
            // A row that runs on over the lines after it has swallowed them: setting it
            // aside would lose them too, so the file fails under either policy.
            Some(reason) if spans_lines && !checks.stop_at_first_bad => {
                return Err(format!(
                    "line {line}: {reason}, to line {end_line}: the {} lines it swallowed cannot be set aside \
                     one by one; fix the quoting",
                    end_line.saturating_sub(line)
                ));
            }
            Some(reason) => {
                report.bad.push(bad(line, reason, row, checks.dialect.delimiter));
                if checks.stop_at_first_bad {
                    break;
                }
            }
            None => {
                report.rows += 1;
                if row.len() > width {
                    report.found.repaired += 1;
                }
                if spans_lines {
                    report.found.multiline = true;
                }
                if checks.limit.is_some_and(|n| report.rows as usize >= n) {
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// Writes the good rows of a file (trimmed to the header's width) to a local copy.
fn write_clean_copy(
    reader: Box<dyn Read + Send>,
    checks: &Csv,
    skip_lines: &HashSet<u64>,
    dest: &std::path::Path,
) -> std::io::Result<()> {
    let mut csv = checks.dialect.reader(reader);
    let mut out = ::csv::WriterBuilder::new()
        .delimiter(checks.dialect.delimiter)
        .quote(checks.dialect.quote)
        .from_writer(lint::create_copy(dest)?);
    let mut record = ::csv::ByteRecord::new();
    let mut width = None;
    let mut written = 0usize;
    while csv.read_byte_record(&mut record).map_err(std::io::Error::other)? {
        let line = record.position().map_or(0, |p| p.line());
        if skip_lines.contains(&line) {
            continue;
        }
        let w = *width.get_or_insert(record.len());
        let trimmed: ::csv::ByteRecord = record.iter().take(w).collect();
        out.write_byte_record(&trimmed)?;
        if !checks.dialect.header || line > 1 {
            written += 1;
        }
        if checks.limit.is_some_and(|n| written >= n) {
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
    let dialect = Dialect::from_spec(&src.spec.format);
    // Header names are lower-cased, so declared names are too.
    let declared: Vec<(String, DataType)> =
        declared_types(src.spec).into_iter().map(|(c, t)| (c.to_lowercase(), t)).collect();
    let format = Csv {
        dialect: dialect.clone(),
        key: src.spec.key.as_deref().map(str::to_lowercase),
        declared: declared.clone(),
        stop_at_first_bad: src.spec.on_bad_rows == BadRowPolicy::Fail,
        limit: src.limit,
    };
    let (_, checked) = lint::check_and_copy(format, src, files, rejected).await?;
    // Files with the same header (same columns in the same order) share one listing table.
    let mut groups: IndexMap<Vec<String>, (Vec<String>, bool)> = IndexMap::new();
    let mut rows = 0;
    for CheckedFile { report, read_url } in checked {
        rows += report.rows;
        let Header { columns, multiline, .. } = report.found;
        if columns.is_empty() {
            continue;
        }
        let entry = groups.entry(columns).or_default();
        entry.0.extend(read_url);
        entry.1 |= multiline;
    }
    let mut frames = Vec::new();
    let mut all_columns: Vec<String> = Vec::new();
    for (columns, (urls, multiline)) in &groups {
        for c in columns {
            if !all_columns.contains(c) {
                all_columns.push(c.clone());
            }
        }
        if urls.is_empty() {
            continue;
        }
        let format = CsvFormat::default()
            .with_delimiter(dialect.delimiter)
            .with_quote(dialect.quote)
            .with_escape(dialect.escape)
            .with_has_header(dialect.header)
            .with_newlines_in_values(*multiline);
        let options = ListingOptions::new(Arc::new(format)).with_file_extension("");
        let schema = Arc::new(text_schema(columns));
        frames.push(listing_frame(ctx, src.name, urls, options, schema).await?);
    }
    let Some(df) = union_by_name(src.name, frames)? else { return Ok((None, all_columns, 0)) };
    let df = apply_declared(src.name, df, &declared)?;
    Ok((Some(df), all_columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(stop: bool) -> Csv {
        Csv {
            dialect: Dialect { delimiter: b';', quote: b'"', escape: None, header: true },
            key: Some("id".into()),
            declared: vec![("bedrag".into(), DataType::Decimal128(18, 2))],
            stop_at_first_bad: stop,
            limit: None,
        }
    }

    fn run(text: &[u8], stop: bool) -> FileReport<Header> {
        check(text, stop).unwrap()
    }

    fn check(text: &[u8], stop: bool) -> Result<FileReport<Header>, String> {
        check_file(Box::new(std::io::Cursor::new(text.to_vec())), &checks(stop), "file:///x.csv")
    }

    #[test]
    fn clean_file_with_bom_and_mixed_case_header() {
        let r = run("\u{feff}ID; Naam ;Bedrag\n1;Jan;12.50\n2;\"de Vries; Piet\";3\n".as_bytes(), false);
        assert_eq!(r.found.columns, ["id", "naam", "bedrag"]);
        assert_eq!(r.rows, 2);
        assert!(r.bad.is_empty());
    }

    #[test]
    fn each_kind_of_bad_row_is_found_with_its_line() {
        let text = b"id;naam;bedrag\n1;Jan;1\n2;Piet\n;Kees;2\n4;Jos;twee\n5;Caf\xe9;1\n7;x;1\n";
        let r = run(text, false);
        let lines: Vec<(u64, &str)> = r.bad.iter().map(|b| (b.line, b.reason.as_str())).collect();
        assert_eq!(lines[0].0, 3);
        assert!(lines[0].1.contains("2 fields"));
        assert_eq!(lines[1], (4, "empty key `id`"));
        assert_eq!(lines[2].0, 5);
        assert!(lines[2].1.contains("`twee` is not a valid"));
        assert_eq!(lines[3].0, 6);
        assert!(lines[3].1.contains("UTF-8"));
        assert_eq!(r.rows, 2);
    }

    #[test]
    fn an_unterminated_quote_fails_the_file_instead_of_swallowing_rows() {
        let text = b"id;naam;bedrag\n1;Jan;1\n6;\"open;3\n7;x;1\n8;y;2\n";
        let err = check(text, false).unwrap_err();
        assert!(err.starts_with("line 3: unterminated quote") && err.contains("cannot be set aside"), "{err}");
    }

    #[test]
    fn a_header_without_the_key_column_fails_the_file() {
        let err = check(b"ident;naam\n1;Jan\n", false).unwrap_err();
        assert!(err.contains("no key column `id`") && err.contains("columns: ident, naam"), "{err}");
    }

    #[test]
    fn stops_at_first_bad_row_when_failing() {
        let r = run(b"id;naam;bedrag\n1;a\n2;b\n", true);
        assert_eq!(r.bad.len(), 1);
    }

    #[test]
    fn trailing_empty_fields_are_repaired_not_rejected() {
        let r = run(b"id;naam;bedrag\n1;Jan;1;\n", false);
        assert!(r.bad.is_empty());
        assert_eq!(r.found.repaired, 1);
    }

    #[test]
    fn clean_copy_drops_bad_lines_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("c.csv");
        let text = b"id;naam;bedrag\n1;Jan;1;\n2;Piet\n3;Kees;2\n".to_vec();
        let skip: HashSet<u64> = [3].into();
        write_clean_copy(Box::new(std::io::Cursor::new(text)), &checks(false), &skip, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest).unwrap(), "id;naam;bedrag\n1;Jan;1\n3;Kees;2\n");
    }
}
