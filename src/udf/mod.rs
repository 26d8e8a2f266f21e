//! The SQL functions klantbeeld adds to DataFusion: normalisation and comparison of
//! identity attributes. Staging uses them, and so can any user SQL (models, YAML
//! expressions), because they are registered on the session under these names.

mod address;
mod dates;
mod email;
mod levels;
mod memo;
mod name;
mod numbers;
mod phone;
mod pick;
mod similarity;

pub use address::{is_dutch_postcode, normalize_house_number, normalize_postcode};
pub use dates::{birth_dates_compatible, parse_date, parse_timestamp};
pub use email::{email_local_part, normalize_email};
pub use levels::levels_text;
pub use name::{
    PARTICLES, double_metaphone, dutch_phonetic, first_name_root, first_names_compatible, fold_name, is_initials,
    is_known_first_name, name_initial, split_full_name, strip_particles,
};
pub use numbers::normalize_number;
pub use phone::{normalize_phone, parse_phone, phone_kind};
pub use similarity::{damerau_levenshtein, damerau_levenshtein_within, jaro_winkler};

use std::sync::Arc;

use chrono::Datelike;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Builder, Float64Builder, Int64Array, LargeStringArray, StringArray,
    StringBuilder, StringViewArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Date32Type, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Every function klantbeeld registers, by SQL name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    NormalizeEmail,
    EmailLocalPart,
    NormalizePhone,
    PhoneKind,
    ParsePhone,
    FoldName,
    StripParticles,
    FirstNameRoot,
    NameInitial,
    IsInitials,
    DutchPhonetic,
    DoubleMetaphone,
    SplitFirstName,
    SplitLastName,
    NormalizePostcode,
    NormalizeHouseNumber,
    JaroWinkler,
    DamerauLevenshtein,
    ParseDate,
    ParseTimestamp,
    FirstNamesCompatible,
    BirthDatesCompatible,
    IsKnownFirstName,
    NormalizeNumber,
    HashBucket,
    ComparisonLevel,
    EqualityWeight,
    AfterJoin,
    JsonObject,
    PickKey,
    PickValue,
}

impl Function {
    pub const ALL: [Function; 31] = [
        Function::NormalizeEmail,
        Function::EmailLocalPart,
        Function::NormalizePhone,
        Function::PhoneKind,
        Function::ParsePhone,
        Function::FoldName,
        Function::StripParticles,
        Function::FirstNameRoot,
        Function::NameInitial,
        Function::IsInitials,
        Function::DutchPhonetic,
        Function::DoubleMetaphone,
        Function::SplitFirstName,
        Function::SplitLastName,
        Function::NormalizePostcode,
        Function::NormalizeHouseNumber,
        Function::JaroWinkler,
        Function::DamerauLevenshtein,
        Function::ParseDate,
        Function::ParseTimestamp,
        Function::FirstNamesCompatible,
        Function::BirthDatesCompatible,
        Function::IsKnownFirstName,
        Function::NormalizeNumber,
        Function::HashBucket,
        Function::ComparisonLevel,
        Function::EqualityWeight,
        Function::AfterJoin,
        Function::JsonObject,
        Function::PickKey,
        Function::PickValue,
    ];

    pub fn sql_name(self) -> &'static str {
        match self {
            Function::NormalizeEmail => "normalize_email",
            Function::EmailLocalPart => "email_local_part",
            Function::NormalizePhone => "normalize_phone",
            Function::PhoneKind => "phone_kind",
            Function::ParsePhone => "parse_phone",
            Function::FoldName => "fold_name",
            Function::StripParticles => "strip_particles",
            Function::FirstNameRoot => "first_name_root",
            Function::NameInitial => "name_initial",
            Function::IsInitials => "is_initials",
            Function::DutchPhonetic => "dutch_phonetic",
            Function::DoubleMetaphone => "double_metaphone",
            Function::SplitFirstName => "split_first_name",
            Function::SplitLastName => "split_last_name",
            Function::NormalizePostcode => "normalize_postcode",
            Function::NormalizeHouseNumber => "normalize_house_number",
            Function::JaroWinkler => "jaro_winkler",
            Function::DamerauLevenshtein => "damerau_levenshtein",
            Function::ParseDate => "parse_date",
            Function::ParseTimestamp => "parse_timestamp",
            Function::FirstNamesCompatible => "first_names_compatible",
            Function::BirthDatesCompatible => "birth_dates_compatible",
            Function::IsKnownFirstName => "is_known_first_name",
            Function::NormalizeNumber => "normalize_number",
            Function::HashBucket => "hash_bucket",
            Function::ComparisonLevel => "comparison_level",
            Function::EqualityWeight => "equality_weight",
            Function::AfterJoin => "after_join",
            Function::JsonObject => "json_object",
            Function::PickKey => "pick_key",
            Function::PickValue => "pick_value",
        }
    }

    fn signature(self) -> Signature {
        let v = Volatility::Immutable;
        match self {
            // The region argument is optional and defaults to NL.
            Function::NormalizePhone | Function::PhoneKind | Function::ParsePhone => {
                Signature::one_of(vec![TypeSignature::String(1), TypeSignature::String(2)], v)
            }
            Function::JaroWinkler | Function::FirstNamesCompatible => Signature::string(2, v),
            // Any two values, measured as text: dates without making text of them first;
            // an optional largest distance of interest.
            Function::DamerauLevenshtein => Signature::one_of(vec![TypeSignature::Any(2), TypeSignature::Any(3)], v),
            Function::BirthDatesCompatible => Signature::exact(vec![DataType::Date32, DataType::Date32], v),
            // Any value (read as text) and a bucket count.
            Function::HashBucket => Signature::any(2, v),
            // Two values of one type and the levels (see `levels.rs`).
            Function::ComparisonLevel => Signature::any(3, v),
            // Groups of two values and their two weights (see `levels.rs`).
            Function::EqualityWeight => Signature::variadic_any(v),
            // Pairs of a key and a value.
            Function::JsonObject => Signature::variadic_any(v),
            // The directions, the order columns, the values (see `pick.rs`).
            Function::PickKey => Signature::variadic_any(v),
            // A key and the value's index.
            Function::PickValue => Signature::any(2, v),
            // Volatile on purpose: the optimizer moves no filter over its value into the
            // join below it (see `PairScore::query_weighing` in `resolve/rules.rs`).
            Function::AfterJoin => Signature::exact(vec![DataType::Float64], Volatility::Volatile),
            _ => Signature::string(1, v),
        }
    }

    fn return_type(self) -> DataType {
        match self {
            Function::JaroWinkler | Function::EqualityWeight | Function::AfterJoin => DataType::Float64,
            Function::DamerauLevenshtein | Function::HashBucket | Function::ComparisonLevel => DataType::Int64,
            Function::IsInitials
            | Function::IsKnownFirstName
            | Function::FirstNamesCompatible
            | Function::BirthDatesCompatible => DataType::Boolean,
            Function::ParseDate => DataType::Date32,
            Function::ParseTimestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Function::ParsePhone => DataType::Struct(phone_fields()),
            Function::PickKey => DataType::Binary,
            _ => DataType::Utf8,
        }
    }

    /// Whether the function's argument is a name: a few thousand distinct values over
    /// millions of records, so that a thread remembers its answers (see [`memo::TextMemo`]).
    fn reads_names(self) -> bool {
        matches!(
            self,
            Function::FoldName
                | Function::StripParticles
                | Function::FirstNameRoot
                | Function::NameInitial
                | Function::DutchPhonetic
                | Function::DoubleMetaphone
        )
    }

    /// The text-to-text functions; `None` for those with another shape.
    fn text_kernel(self) -> Option<fn(&str) -> Option<String>> {
        Some(match self {
            Function::NormalizeEmail => normalize_email,
            Function::EmailLocalPart => |s| normalize_email(s).and_then(|e| email_local_part(&e).map(String::from)),
            Function::FoldName => fold_name,
            Function::StripParticles => strip_particles,
            Function::FirstNameRoot => first_name_root,
            Function::NameInitial => name_initial,
            Function::DutchPhonetic => dutch_phonetic,
            Function::DoubleMetaphone => double_metaphone,
            Function::SplitFirstName => |s| split_full_name(s).0,
            Function::SplitLastName => |s| split_full_name(s).1,
            Function::NormalizePostcode => normalize_postcode,
            Function::NormalizeHouseNumber => normalize_house_number,
            Function::NormalizeNumber => normalize_number,
            _ => return None,
        })
    }
}

thread_local! {
    /// Per name function, its answers on this thread (see [`Function::reads_names`]).
    static NAME_ANSWERS: std::cell::RefCell<foldhash::HashMap<Function, memo::TextMemo<Option<String>>>> =
        Default::default();
    /// `is_known_first_name`'s answers on this thread: it reads names too.
    static KNOWN_NAMES: std::cell::RefCell<memo::TextMemo<bool>> = Default::default();
}

/// One registered klantbeeld function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KlantbeeldUdf {
    function: Function,
    signature: Signature,
}

impl KlantbeeldUdf {
    pub fn new(function: Function) -> Self {
        Self { function, signature: function.signature() }
    }
}

/// Iterates a text column whatever its physical string type; an all-null column reads as
/// nulls.
fn texts<'a>(name: &str, array: &'a ArrayRef) -> Result<Box<dyn Iterator<Item = Option<&'a str>> + 'a>> {
    let column = Texts::of(name, array)?;
    Ok(Box::new((0..array.len()).map(move |row| column.get(row))))
}

/// A text column whatever its physical string type, read by row index; an all-null
/// column reads as nulls.
enum Texts<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Null,
}

impl<'a> Texts<'a> {
    fn of(name: &str, array: &'a ArrayRef) -> Result<Self> {
        Ok(match array.data_type() {
            DataType::Utf8 => Texts::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Texts::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => Texts::Utf8View(array.as_string_view()),
            DataType::Null => Texts::Null,
            other => return exec_err!("{name}: expected a text argument, got {other}"),
        })
    }

    fn get(&self, row: usize) -> Option<&'a str> {
        match self {
            Texts::Utf8(a) => a.is_valid(row).then(|| a.value(row)),
            Texts::LargeUtf8(a) => a.is_valid(row).then(|| a.value(row)),
            Texts::Utf8View(a) => a.is_valid(row).then(|| a.value(row)),
            Texts::Null => None,
        }
    }
}

impl ScalarUDFImpl for KlantbeeldUdf {
    fn name(&self) -> &str {
        self.function.sql_name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.function.return_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        // Its weights are mostly constants: not made into arrays.
        if self.function == Function::EqualityWeight {
            return Ok(ColumnarValue::Array(levels::equality_weights(name, &args.args, rows)?));
        }
        if self.function == Function::AfterJoin {
            return Ok(args.args[0].clone());
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        if self.function == Function::JsonObject {
            return Ok(ColumnarValue::Array(json_objects(name, &arrays, rows)?));
        }
        if self.function == Function::PickKey {
            let directions = match args.args.first() {
                Some(ColumnarValue::Scalar(d)) => d.cast_to(&DataType::Utf8)?,
                _ => return exec_err!("{name}: the directions (first argument) must be a constant text"),
            };
            let ScalarValue::Utf8(Some(directions)) = directions else {
                return exec_err!("{name}: the directions must be a text");
            };
            return Ok(ColumnarValue::Array(pick::pick_keys(name, &directions, &arrays[1..], rows)?));
        }
        if self.function == Function::PickValue {
            let index = match args.args.get(1).map(|i| i.cast_to(&DataType::Int64, None)) {
                Some(Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(i))))) if i >= 0 => i as usize,
                _ => return exec_err!("{name}: the index (second argument) must be a constant whole number from 0"),
            };
            return Ok(ColumnarValue::Array(pick::pick_values(name, &arrays[0], index)?));
        }
        if self.function == Function::BirthDatesCompatible {
            let (a, b) = (arrays[0].as_primitive::<Date32Type>(), arrays[1].as_primitive::<Date32Type>());
            let out: BooleanArray = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| Some(birth_dates_compatible(date_from_days(x?)?, date_from_days(y?)?)))
                .collect();
            return Ok(ColumnarValue::Array(Arc::new(out)));
        }
        if self.function == Function::HashBucket {
            let values = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
            let buckets = datafusion::arrow::compute::cast(&arrays[1], &DataType::Int64)?;
            let buckets = buckets.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let out: datafusion::arrow::array::Int64Array =
                values.as_string::<i32>().iter().zip(buckets.iter()).map(|(v, n)| Some(hash_bucket(v?, n?))).collect();
            return Ok(ColumnarValue::Array(Arc::new(out)));
        }
        if self.function == Function::DamerauLevenshtein {
            let bound = match args.args.get(2) {
                None => None,
                Some(max) => Some(distance_bound(name, max)?),
            };
            return Ok(ColumnarValue::Array(edit_distances(name, &arrays[0], &arrays[1], bound)?));
        }
        if self.function == Function::ComparisonLevel {
            let Some(ColumnarValue::Scalar(levels)) = args.args.get(2) else {
                return exec_err!("{name}: the levels (third argument) must be a constant text");
            };
            let levels = match levels.cast_to(&DataType::Utf8)? {
                ScalarValue::Utf8(Some(text)) => text,
                other => return exec_err!("{name}: the levels must be a text, got {other}"),
            };
            return Ok(ColumnarValue::Array(levels::comparison_levels(name, &arrays[0], &arrays[1], &levels)?));
        }
        let first = texts(name, &arrays[0])?;
        let out: ArrayRef = if let Some(kernel) = self.function.text_kernel() {
            let mut b = StringBuilder::with_capacity(rows, rows * 12);
            if self.function.reads_names() {
                NAME_ANSWERS.with_borrow_mut(|memos| {
                    let memo = memos.entry(self.function).or_default();
                    for v in first {
                        match v {
                            Some(v) => memo.read(v, kernel, |answer| b.append_option(answer.as_deref())),
                            None => b.append_null(),
                        }
                    }
                });
            } else {
                for v in first {
                    b.append_option(v.and_then(kernel));
                }
            }
            Arc::new(b.finish())
        } else {
            match self.function {
                Function::NormalizePhone | Function::PhoneKind | Function::ParsePhone => {
                    let regions: Box<dyn Iterator<Item = Option<&str>>> = match arrays.get(1) {
                        Some(a) => texts(name, a)?,
                        None => Box::new(std::iter::repeat(Some("NL"))),
                    };
                    let parsed =
                        first.zip(regions).map(|(v, region)| v.and_then(|v| parse_phone(v, region.unwrap_or("NL"))));
                    phone_array(self.function, parsed, rows)
                }
                Function::JaroWinkler => {
                    let mut b = Float64Builder::with_capacity(rows);
                    for (x, y) in first.zip(texts(name, &arrays[1])?) {
                        b.append_option(x.zip(y).map(|(x, y)| jaro_winkler(x, y)));
                    }
                    Arc::new(b.finish())
                }
                Function::FirstNamesCompatible => {
                    let values: BooleanArray =
                        first.zip(texts(name, &arrays[1])?).map(|(x, y)| first_names_compatible(x?, y?)).collect();
                    Arc::new(values)
                }
                Function::IsKnownFirstName => KNOWN_NAMES.with_borrow_mut(|memo| {
                    let values: BooleanArray =
                        first.map(|v| v.map(|v| memo.read(v, is_known_first_name, |known| *known))).collect();
                    Arc::new(values) as ArrayRef
                }),
                Function::IsInitials => {
                    let values: BooleanArray = first.map(|v| v.map(is_initials)).collect();
                    Arc::new(values)
                }
                Function::ParseDate => {
                    let mut b = Date32Builder::with_capacity(rows);
                    for v in first {
                        b.append_option(v.and_then(parse_date).map(|d| d.num_days_from_ce() - EPOCH_DAYS_FROM_CE));
                    }
                    Arc::new(b.finish())
                }
                Function::ParseTimestamp => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
                    for v in first {
                        b.append_option(v.and_then(parse_timestamp).map(|t| t.timestamp_micros()));
                    }
                    Arc::new(b.finish())
                }
                other => return exec_err!("{}: no kernel", other.sql_name()),
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `json_object(key, value, ...)`: per row, a JSON object of the keys whose value is not
/// null, each value as its text (`{"email":"crm:17"}`; `{}` when all are null). The
/// golden record's lineage is one per customer: built in SQL, its escaping and
/// concatenation took 20 string functions a row.
fn json_objects(name: &str, arrays: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
    if !arrays.len().is_multiple_of(2) {
        return exec_err!("{name}: expects pairs of a key and a value, got {} arguments", arrays.len());
    }
    let texts: Vec<ArrayRef> = arrays.iter().map(as_text).collect::<Result<_>>()?;
    let columns: Vec<Texts> = texts.iter().map(|a| Texts::of(name, a)).collect::<Result<_>>()?;
    let mut b = StringBuilder::with_capacity(rows, rows * 64);
    let mut object = Vec::new();
    for row in 0..rows {
        object.clear();
        object.push(b'{');
        for pair in columns.chunks(2) {
            let (Some(key), Some(value)) = (pair[0].get(row), pair[1].get(row)) else { continue };
            if object.len() > 1 {
                object.push(b',');
            }
            // Writing a text into a vector fails never; the vector then holds JSON, UTF-8.
            serde_json::to_writer(&mut object, key).map_err(|e| exec_datafusion_err!("{name}: {e}"))?;
            object.push(b':');
            serde_json::to_writer(&mut object, value).map_err(|e| exec_datafusion_err!("{name}: {e}"))?;
        }
        object.push(b'}');
        b.append_value(std::str::from_utf8(&object).map_err(|e| exec_datafusion_err!("{name}: {e}"))?);
    }
    Ok(Arc::new(b.finish()))
}

/// A column as text: text as it is, any other type cast to it.
fn as_text(array: &ArrayRef) -> Result<ArrayRef> {
    Ok(match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => array.clone(),
        _ => datafusion::arrow::compute::cast(array, &DataType::Utf8)?,
    })
}

/// The fields of `parse_phone`'s struct: `number` (E.164) and `kind`.
fn phone_fields() -> datafusion::arrow::datatypes::Fields {
    use datafusion::arrow::datatypes::Field;
    vec![Field::new("number", DataType::Utf8, true), Field::new("kind", DataType::Utf8, true)].into()
}

/// The column a phone function answers with, from each row's parse.
fn phone_array(
    function: Function,
    parsed: impl Iterator<Item = Option<(String, &'static str)>>,
    rows: usize,
) -> ArrayRef {
    let (mut numbers, mut kinds) =
        (StringBuilder::with_capacity(rows, rows * 12), StringBuilder::with_capacity(rows, rows * 6));
    for p in parsed {
        numbers.append_option(p.as_ref().map(|(number, _)| number));
        kinds.append_option(p.map(|(_, kind)| kind));
    }
    match function {
        Function::NormalizePhone => Arc::new(numbers.finish()),
        Function::PhoneKind => Arc::new(kinds.finish()),
        _ => {
            // A struct row is null where its number is: the text was no phone number.
            let (numbers, kinds) = (numbers.finish(), kinds.finish());
            let nulls = numbers.nulls().cloned();
            let columns: Vec<ArrayRef> = vec![Arc::new(numbers), Arc::new(kinds)];
            Arc::new(datafusion::arrow::array::StructArray::new(phone_fields(), columns, nulls))
        }
    }
}

/// The bucket in `0..buckets` of a value: FNV-1a, so that it is the same on every run and
/// machine (a run splits work into passes by it).
pub fn hash_bucket(value: &str, buckets: i64) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % buckets.max(1) as u64) as i64
}

/// The third argument of `damerau_levenshtein`: a constant of 0 or more. It is a constant
/// because a comparison level writes one (`<= 1`), and it bounds the work for all rows.
fn distance_bound(name: &str, max: &ColumnarValue) -> Result<u32> {
    let ColumnarValue::Scalar(value) = max else {
        return exec_err!("{name}: the largest distance of interest (third argument) must be a constant");
    };
    match value.cast_to(&DataType::Int64)? {
        ScalarValue::Int64(Some(max)) if max >= 0 => Ok(u32::try_from(max).unwrap_or(u32::MAX - 1)),
        other => exec_err!("{name}: the largest distance of interest must be 0 or more, got {other}"),
    }
}

/// `damerau_levenshtein` of two columns of any type, each value read as its text, or,
/// given a `bound`, the distance capped at `bound + 1`. The person rule measures birth
/// dates for millions of pairs: two dates are measured on their text written on the
/// stack, and equal dates not at all.
fn edit_distances(name: &str, a: &ArrayRef, b: &ArrayRef, bound: Option<u32>) -> Result<ArrayRef> {
    let measure = |x: &str, y: &str| match bound {
        Some(max) => damerau_levenshtein_within(x, y, max),
        None => damerau_levenshtein(x, y),
    };
    if a.data_type() == &DataType::Date32 && b.data_type() == &DataType::Date32 {
        let (a, b) = (a.as_primitive::<Date32Type>(), b.as_primitive::<Date32Type>());
        let out: Int64Array = a.iter().zip(b.iter()).map(|(x, y)| date_distance(x?, y?, measure)).collect();
        return Ok(Arc::new(out));
    }
    let (a, b) = (as_text(a)?, as_text(b)?);
    let out: Int64Array = texts(name, &a)?.zip(texts(name, &b)?).map(|(x, y)| Some(measure(x?, y?))).collect();
    Ok(Arc::new(out))
}

fn date_distance(x: i32, y: i32, measure: impl Fn(&str, &str) -> i64) -> Option<i64> {
    if x == y {
        return Some(0);
    }
    let (x, y) = (date_from_days(x)?, date_from_days(y)?);
    Some(match (dates::date_text(x), dates::date_text(y)) {
        // ASCII digits and dashes.
        (Some(a), Some(b)) => measure(std::str::from_utf8(&a).ok()?, std::str::from_utf8(&b).ok()?),
        _ => measure(&x.to_string(), &y.to_string()),
    })
}

/// Days from 0001-01-01 to 1970-01-01, to turn a chrono date into Arrow's Date32.
const EPOCH_DAYS_FROM_CE: i32 = 719_163;

fn date_from_days(days: i32) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::from_num_days_from_ce_opt(days + EPOCH_DAYS_FROM_CE)
}

/// All klantbeeld functions as DataFusion UDFs.
pub fn all() -> Vec<ScalarUDF> {
    Function::ALL.iter().map(|f| ScalarUDF::from(KlantbeeldUdf::new(*f))).collect()
}

/// Registers every klantbeeld function on a session.
pub fn register(ctx: &SessionContext) {
    for udf in all() {
        ctx.register_udf(udf);
    }
}

/// An expression calling one of klantbeeld's functions.
pub fn call(function: Function, args: Vec<datafusion::prelude::Expr>) -> datafusion::prelude::Expr {
    Arc::new(ScalarUDF::from(KlantbeeldUdf::new(function))).call(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    #[tokio::test]
    async fn json_object_escapes_and_leaves_out_nulls() {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx
            .sql(
                "SELECT json_object('email', v, 'phone', CAST(NULL AS VARCHAR), 'n', 7) AS o, \
                 json_object('a', CAST(NULL AS VARCHAR)) AS empty \
                 FROM (VALUES ('crm:\"x\\y'), ('pos:line\nbreak')) t(v)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let column = |i: usize| batches[0].column(i).as_string::<i32>().iter().map(|v| v.unwrap().to_string());
        let objects: Vec<String> = column(0).collect();
        assert_eq!(objects, [r#"{"email":"crm:\"x\\y","n":"7"}"#, r#"{"email":"pos:line\nbreak","n":"7"}"#]);
        for object in &objects {
            let parsed: serde_json::Value = serde_json::from_str(object).unwrap();
            assert!(parsed.get("phone").is_none(), "{object}");
        }
        assert!(column(1).all(|o| o == "{}"));
        let odd = ctx.sql("SELECT json_object('a')").await.unwrap().collect().await.unwrap_err().to_string();
        assert!(odd.contains("pairs of a key and a value"), "{odd}");
    }

    #[tokio::test]
    async fn functions_work_from_sql_on_view_and_plain_strings() {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx
            .sql(
                "SELECT normalize_email(arrow_cast(' Jan.Vries+x@GMail.com', 'Utf8View')) AS e, \
                 normalize_phone('06-12345679', 'NL') AS p, normalize_phone('0612345679') AS p2, \
                 fold_name('Vries, de') AS f, first_name_root('Hans') AS r, \
                 round(jaro_winkler('jansen', 'janssen'), 2) AS jw, \
                 damerau_levenshtein('jansen', 'jnasen') AS dl, parse_date('07-03-1980') AS d, \
                 parse_timestamp('2026-11-22T14:05:00+01:00') AS ts, split_last_name('J. de Vries') AS l, \
                 normalize_email(NULL) AS n",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        for want in [
            "janvries@gmail.com",
            "+31612345679",
            "devries",
            "johannes",
            "0.97",
            "| 1 ",
            "1980-03-07",
            "2026-11-22T13:05:00Z",
            "de Vries",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    /// `parse_phone` answers what `normalize_phone` and `phone_kind` do, in one struct
    /// that is null where the text is no phone number.
    #[tokio::test]
    async fn parse_phone_gives_number_and_kind_of_one_parse() {
        let ctx = SessionContext::new();
        register(&ctx);
        let sql = "SELECT t, parse_phone(t, 'NL')['number'] AS n, parse_phone(t, 'NL')['kind'] AS k, \
                   parse_phone(t) IS NULL AS missing, normalize_phone(t, 'NL') AS n2, phone_kind(t, 'NL') AS k2 \
                   FROM (VALUES ('06-12345679'), ('(020) 624 5518'), ('+32 470 12 34 56'), ('geen'), (NULL)) v(t)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let rows: Vec<Vec<String>> = (0..batches[0].num_rows())
            .map(|r| {
                (0..6)
                    .map(|c| datafusion::arrow::util::display::array_value_to_string(batches[0].column(c), r).unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(rows[0][1..4], ["+31612345679", "mobile", "false"]);
        assert_eq!(rows[1][1..4], ["+31206245518", "fixed_line", "false"]);
        assert_eq!(rows[2][1..4], ["+32470123456", "mobile", "false"]);
        for row in &rows[3..] {
            assert_eq!(row[1..4], ["", "", "true"], "{row:?}");
        }
        for row in &rows {
            assert_eq!((&row[1], &row[2]), (&row[4], &row[5]), "{row:?}");
        }
    }

    /// Dates are measured as the text `CAST(... AS VARCHAR)` gives them, and any other
    /// type as its text too.
    #[tokio::test]
    async fn edit_distance_of_dates_is_that_of_their_text() {
        let ctx = SessionContext::new();
        register(&ctx);
        let dates = [
            "DATE '1985-03-02'",
            "DATE '1985-02-03'",
            "DATE '1958-03-02'",
            "DATE '1985-03-20'",
            "DATE '0033-01-01'",
            "DATE '2001-12-31'",
            "arrow_cast(-800000, 'Date32')",
            "arrow_cast(3000000, 'Date32')",
        ];
        for a in dates {
            for b in dates {
                let sql = format!(
                    "SELECT damerau_levenshtein({a}, {b}) = damerau_levenshtein(CAST({a} AS VARCHAR), CAST({b} AS VARCHAR)) \
                     AND damerau_levenshtein({a}, {b}) IS NOT NULL \
                     AND damerau_levenshtein({a}, {b}, 1) = least(damerau_levenshtein({a}, {b}), 2) \
                     AND damerau_levenshtein({a}, {b}, 0) = least(damerau_levenshtein({a}, {b}), 1)"
                );
                let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                assert!(batches[0].column(0).as_boolean().value(0), "{a} {b}");
            }
        }
        let batches = ctx
            .sql("SELECT damerau_levenshtein(1234, '1243') AS n, damerau_levenshtein(NULL, 'x') AS m")
            .await
            .unwrap();
        let batches = batches.collect().await.unwrap();
        assert_eq!(batches[0].column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0), 1);
        assert!(batches[0].column(1).is_null(0));
        // The bound is a constant of 0 or more.
        for bad in ["damerau_levenshtein('a', 'b', -1)", "damerau_levenshtein('a', 'b', n)"] {
            let error = match ctx.sql(&format!("SELECT {bad} FROM (VALUES (1), (2)) AS t(n)")).await {
                Ok(frame) => frame.collect().await.unwrap_err(),
                Err(error) => error,
            };
            assert!(error.to_string().contains("largest distance of interest"), "{bad}: {error}");
        }
    }

    #[tokio::test]
    async fn hash_bucket_spreads_values_and_is_stable() {
        let counts: Vec<usize> = (0..4)
            .map(|b| (0..4000).filter(|i| hash_bucket(&format!("klant{i}@example.nl"), 4) == b).count())
            .collect();
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "uneven buckets {counts:?}");
        assert_eq!(hash_bucket("jan@example.nl", 1), 0);
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx
            .sql("SELECT hash_bucket(arrow_cast('jan@example.nl', 'Utf8View'), 7) AS a, hash_bucket(123, 7) AS b, hash_bucket(NULL, 7) AS c")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let row = batches[0].clone();
        let col = |i: usize| row.column(i).as_primitive::<datafusion::arrow::datatypes::Int64Type>().clone();
        assert_eq!(col(0).value(0), hash_bucket("jan@example.nl", 7));
        assert_eq!(col(1).value(0), hash_bucket("123", 7));
        assert!(col(2).is_null(0));
    }
}
